"""The core: pure tensor functions of Sparsity-Aware Unlearning.

What belongs here: math on tensors and on a model's structure, with no Trainer, no file or network I/O and no
`torch.distributed` call (a caller that runs on several processes reduces the results itself, through
`sau_trainer.parallel`). Mask packing and the fused mask kernels, the saliency estimate's arithmetic, selection
and redistribution, the top-k count and the exact top-k threshold search (`topk`, which takes a caller's reductions
as an argument, so the same function selects on one process and over row shards), the moving mask's
projections, which weights are prunable.

What may import it: every other layer. What it may import: torch and the standard library, and other modules of
`sau_trainer.core`; never a module of the package above it (`training`, `parallel`, `pipeline`, ...).
This package's `__init__` re-exports nothing: import from the module that defines a name.
"""
