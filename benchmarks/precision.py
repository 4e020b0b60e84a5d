"""Do the updates land? Fraction of selected surviving entries changed, per precision configuration.

    python benchmarks/precision.py                 # small Llama (4 layers, d=256), bf16-loaded, 50% magnitude
    python benchmarks/precision.py --steps 10 --lrs 1e-5 1e-4 --shape small

For each configuration: a random-weight Llama is 50% magnitude-pruned and cast to bf16 ("bf16-loaded"; the
fp32 row starts from the same bf16 values), then SAUTrainer runs SAU gradient ascent on the built-in
benchmark's forget set for `--steps` optimizer steps (constant lr, no weight decay). Reported per
learning rate: the fraction of the selected entries (G) whose stored value changed, and, for Kahan
summation, of weight + compensation buffer ("effective"); and the bytes per parameter of weights, gradients
and optimizer state as measured, with what that means for Llama-3.1-8B (8.03e9 parameters) on one 80 GB GPU.
Rows whose optional package is missing are skipped (`pip install 'sau-trainer[precision]'`).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sau_trainer import SAUConfig, SAUTrainer, prune_model  # noqa: E402
from sau_trainer.data.synthetic import generate_benchmark  # noqa: E402
from sau_trainer.data.tokenizer import train_tokenizer  # noqa: E402
from sau_trainer.modeling import build_llama  # noqa: E402
from sau_trainer.precision import compensation_buffer, unwrap_optimizer  # noqa: E402

PARAMS_8B = 8.03e9
# What a full-parameter SAU run needs on top of weights, gradients and optimizer state (an assumption, stated
# in the README): activations with gradient checkpointing at batch 4 x 512 (about 3 GB, the fp32 logits of a
# 128k vocabulary included), M and G bit-packed (0.25 B per prunable parameter, 1.7 GB) and the CUDA context
# and allocator slack (about 3 GB).
OVERHEAD_8B_GB = 8.0

# name, model dtype, SAUConfig fields, package needed
CONFIGS = [
    ("fp32 weights, AdamW (reference)", torch.float32, dict(optim="adamw_torch"), None),
    ("bf16, AdamW, no correction (keep)", torch.bfloat16,
     dict(optim="adamw_torch", bf16=True, low_precision_weights="keep"), None),
    ("bf16, bnb AdamW8bit, no correction (keep)", torch.bfloat16,
     dict(optim="adamw_bnb_8bit", bf16=True, low_precision_weights="keep"), "bitsandbytes"),
    ("bf16 -> fp32 master (upcast), AdamW", torch.bfloat16, dict(optim="adamw_torch", bf16=True), None),
    ("bf16 -> fp32 master (upcast), bnb AdamW8bit", torch.bfloat16, dict(optim="adamw_bnb_8bit", bf16=True),
     "bitsandbytes"),
    ("bf16, kahan_adamw (torch-optimi)", torch.bfloat16,
     dict(compensated_optimizer="kahan_adamw", bf16=True, low_precision_weights="error"), "optimi"),
    ("bf16, sr_adamw (torchao)", torch.bfloat16,
     dict(compensated_optimizer="sr_adamw", bf16=True, low_precision_weights="error"), "torchao"),
    ("bf16, sr_adamw8bit (torchao)", torch.bfloat16,
     dict(compensated_optimizer="sr_adamw8bit", bf16=True, low_precision_weights="error"), "torchao"),
]


def _tensor_bytes(t) -> int:
    """Bytes of a tensor, including the inner tensors of a tensor subclass (torchao's quantised states)."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def state_bytes(optimizer) -> int:
    total = 0
    for st in unwrap_optimizer(optimizer).state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.numel() > 1:  # step counters and flags are not per-parameter
                total += _tensor_bytes(v)
    return total


def run(model, fields, lr, steps, tok, forget, out):
    args = SAUConfig(output_dir=out, report_to=[], per_device_train_batch_size=4, learning_rate=lr, max_steps=steps,
                     save_strategy="no", disable_tqdm=True, logging_steps=10_000, weight_decay=0.0, seed=0,
                     lr_scheduler_type="constant", objective="ga", use_cpu=True, update_check_steps=0, **fields)
    trainer = SAUTrainer(model, args, forget_dataset=forget, processing_class=tok)
    before = {}

    class Snapshot:  # the selected entries exist once the saliency pass has run: copy them before step 1
        def on_pre_optimizer_step(self, *a, **k):
            if not before:
                for name, p in trainer.saliency_targets().items():
                    g = trainer.sau_state.mask(name)
                    before[name] = p.detach()[g].double().clone()

    from transformers import TrainerCallback

    trainer.add_callback(type("SnapshotCallback", (Snapshot, TrainerCallback), {})())
    trainer.train()
    changed = effective = total = 0
    for name, p in trainer.saliency_targets().items():
        g = trainer.sau_state.mask(name)
        now = p.detach()[g].double()
        buf = compensation_buffer(trainer.optimizer, p)
        eff = now + buf.detach()[g].double() if buf is not None else now
        changed += int((now != before[name]).sum())
        effective += int((eff != before[name]).sum())
        total += now.numel()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    weight_b = sum(p.numel() * p.element_size() for p in params) / n
    return changed / total, effective / total, weight_b, state_bytes(trainer.optimizer) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="small", help="sau_trainer.modeling.MODEL_SHAPES name")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.getLogger("sau_trainer").setLevel(logging.ERROR)
    bench = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r[k] for rows in bench.values() for r in rows for k in ("question", "answer")],
                          vocab_size=512)
    forget = [{"question": r["question"], "answer": r["answer"]} for r in bench["forget10"]]
    base = build_llama(a.shape, tok, seed=0)
    prune_model(base, "magnitude", sparsity=0.5, progress=False)
    base = base.to(torch.bfloat16)  # bf16-loaded; the fp32 row starts from the same values
    head = ["configuration"] + [f"changed lr={lr:g}" for lr in a.lrs] + ["weights+grads B/param",
                                                                         "optimizer state B/param",
                                                                         "8B: GB (fits 80 GB?)"]
    rows = []
    for name, dtype, fields, package in CONFIGS:
        if package and importlib.util.find_spec(package) is None:
            print(f"skipped (no {package}): {name}", file=sys.stderr)
            continue
        cells, t0 = [], time.time()
        for lr in a.lrs:
            with tempfile.TemporaryDirectory() as out:
                frac, eff, weight_b, state_b = run(copy.deepcopy(base).to(dtype), fields, lr, a.steps, tok, forget,
                                                   out)
            cells.append(f"{frac:.4f}" + (f" (effective {eff:.4f})" if eff != frac else ""))
        per_param = 2 * weight_b + state_b  # gradients have the weights' dtype
        gb = per_param * PARAMS_8B / 1e9
        fits = "yes" if gb + OVERHEAD_8B_GB <= 80 else "no"
        rows.append([name, *cells, f"{2 * weight_b:.2f}", f"{state_b:.2f}", f"{gb:.0f} ({fits})"])
        print(f"done: {name} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    print(f"\n{a.shape} Llama, 50% magnitude-pruned, bf16-loaded, SAU (k=0.3) gradient ascent, {a.steps} steps, "
          f"fraction of the selected entries G that changed; torch {torch.__version__}, CPU")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(f"8B column: (weights + gradients + optimizer state) x {PARAMS_8B:.2e} parameters; fits if that plus "
          f"~{OVERHEAD_8B_GB:.0f} GB (activations with gradient checkpointing at 4 x 512, masks, CUDA context) "
          "is at most 80 GB.")


if __name__ == "__main__":
    main()
