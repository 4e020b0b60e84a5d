"""Where the tensors live: one process, DDP, FSDP2 and DeepSpeed ZeRO-2/3 behind one small interface.

What belongs here: everything that differs between the ways a model is spread over processes, and nothing else:
which rows of a parameter this rank holds, the all-reduce of sums and counts (what the core's exact threshold
search, `sau_trainer.core.topk`, takes over shards), the gather of a full tensor where a computation needs one,
how a gradient or a weight is read and written under each setup, the launch contract (`launch`).
`backend.Backend` is the interface; the SAU state is built once (`sau_trainer.training.state.build_sau_state`)
and asks a backend only these questions.

What it may import: `sau_trainer.core`, torch (``torch.distributed``), accelerate and DeepSpeed. What may import
it: `sau_trainer.training` and the layers above; never `sau_trainer.core`. This package's `__init__` re-exports
nothing: import from the module that defines a name.
"""
