"""The Trainer glue: what runs SAU inside a `transformers.Trainer`.

What belongs here: the `SparsityPreserving` mixin and `SAUTrainer`, the callbacks, the masks a run carries and
saves (`SparsityMasks`), the saliency pass over a model, the moving mask, precision handling, the divergence
guard, evaluation during training, plain finetuning (`finetuning`: a `transformers.Trainer` with this package's
precision handling). Pure tensor math goes to `sau_trainer.core`; one-process/DDP/FSDP2/ZeRO
differences go to `sau_trainer.parallel`.

What it may import: `sau_trainer.core`, `sau_trainer.parallel`, `sau_trainer.objectives` (the trainer picks an
objective), `sau_trainer.data`'s tokenisation, `config` and the package-root leaf helpers (`progress`, ...),
transformers and torch. What may import it: the layers above (pruning, evaluation, pipeline, hub, the command line);
never `core`, `parallel` or `objectives`. This package's `__init__` re-exports nothing: import from the module
that defines a name.
"""
