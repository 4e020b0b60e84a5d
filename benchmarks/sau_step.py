"""Time and memory of a plain masked step vs an SAU step, and of the saliency pass (SPEC section 6).

    python benchmarks/sau_step.py                                  # small model on CPU
    python benchmarks/sau_step.py --shape llama-3.1-8b --bf16 --optim adamw_bnb_8bit \
        --batch-size 4 --seq-len 512 --gradient-checkpointing     # the SPEC's 8B setting on one GPU

Random weights, 50% random sparsity, random tokens: speed does not depend on what the model knows.
Prints one table. Ratios are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sau_trainer import SAUConfig, SAUTrainer  # noqa: E402
from sau_trainer.masks import prunable_parameters  # noqa: E402
from sau_trainer.modeling import build_llama  # noqa: E402


class _Timer:
    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t


def _peak_bytes(cuda: bool) -> int:
    if cuda:
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(sau: bool, a, rows) -> dict:
    cuda = torch.cuda.is_available()
    model = build_llama(a.shape, vocab_size=a.vocab_size, max_position_embeddings=max(a.seq_len, 64), seed=0)
    if a.bf16:
        model = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p.mul_((torch.rand(p.shape, generator=g) >= 0.5).to(p.dtype))
    n_prunable = sum(p.numel() for p in prunable_parameters(model).values())
    timings: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        args = SAUConfig(
            output_dir=out, objective="ga", sau=sau, max_steps=a.steps + a.warmup, per_device_train_batch_size=a.batch_size,
            learning_rate=1e-5, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=10_000,
            optim=a.optim, bf16=a.bf16, gradient_checkpointing=a.gradient_checkpointing,
            use_cpu=not cuda, weight_decay=0.0,
        )
        trainer = SAUTrainer(model, args, forget_dataset=rows, callbacks=[Clock()])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        saliency_time = None
        if sau:  # time the pass on its own, then let train() reuse its result
            with _Timer(cuda) as t:
                trainer.sparsity_masks.to(args.device)
                from sau_trainer.callbacks import SaliencyCallback

                trainer.sau_state = SaliencyCallback(trainer).build_state()
            saliency_time = t.seconds
        trainer.train()
        steps = sorted(timings[a.warmup:])
        return {
            "mode": "SAU" if sau else "plain",
            "step_s": steps[len(steps) // 2],
            "peak_gb": _peak_bytes(cuda) / 1e9,
            "saliency_s": saliency_time,
            "mask_bytes_per_param": (trainer.sparsity_masks.nbytes()
                                     + (sum(v.numel() for v in trainer.sau_state.selected.values()) if sau else 0)
                                     + (sum(v.numel() * 4 for v in trainer.sau_state.weights.values()) if sau else 0))
            / n_prunable,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="small", help="a name in sau_trainer.modeling.MODEL_SHAPES")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--examples", type=int, default=16, help="forget examples (the saliency pass covers all)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--optim", default=SAUConfig.__dataclass_fields__["optim"].default,
                   help="transformers optimizer name (default: the Trainer's own; on CPU prefer the fused AdamW: "
                        "foreach AdamW is slower on a sparse model's zero moments, see README Performance)")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (needs a CUDA device)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()
    if a.bf16 and not torch.cuda.is_available():
        p.error("--bf16 needs a CUDA device (the CPU timings are fp32); leave it out here.")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(5, a.vocab_size, (a.examples, a.seq_len), generator=g).tolist()]
    results = [run(False, a, rows), run(True, a, rows)]
    plain = results[0]["step_s"]
    epoch = plain * -(-a.examples // a.batch_size)  # one plain pass over the forget set (steps include the optimizer)
    print(f"\nshape={a.shape} batch={a.batch_size}x{a.seq_len} optim={a.optim} bf16={a.bf16} "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'mode':<6} {'step (s)':>9} {'vs plain':>9} {'peak (GB)':>10} {'saliency (s)':>13} {'sal/epoch':>10} {'mask B/param':>13}")
    for r in results:
        sal = f"{r['saliency_s']:.3f}" if r["saliency_s"] is not None else "-"
        ratio = f"{r['saliency_s'] / epoch:.2f}" if r["saliency_s"] is not None else "-"
        print(f"{r['mode']:<6} {r['step_s']:>9.4f} {r['step_s'] / plain:>9.3f} {r['peak_gb']:>10.2f} {sal:>13} {ratio:>10} "
              f"{r['mask_bytes_per_param']:>13.3f}")


if __name__ == "__main__":
    main()
