"""Time and peak memory of each pruning method on a model shape built from a config (random weights).

    python benchmarks/pruning.py                          # CPU: the 'small' shape, 32 x 256 calibration tokens
    python benchmarks/pruning.py --shape llama-3.1-8b     # GPU: bf16, 128 x 2048 calibration tokens

Shapes come from `sau_trainer.modeling.MODEL_SHAPES`. Peak memory is `torch.cuda.max_memory_allocated`
on a GPU and the peak resident set size (the kernel high-water mark) on CPU; "over model" subtracts what the
model itself occupied before pruning. `--layers N` builds only N decoder layers (the time per layer is
printed, so a full model's time can be extrapolated when device time is short).
SPEC section 6 targets on one H100 with the 8B shape: Wanda under 2 minutes, SparseGPT under 10.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sau_trainer.masks import prunable_parameters  # noqa: E402
from sau_trainer.modeling import MODEL_SHAPES, build_llama  # noqa: E402
from sau_trainer.pruning import PRUNERS, prune_model  # noqa: E402

GB = 1024**3


class RssPeak:
    """Peak resident set size of this process while the block runs.

    Linux: the kernel's high-water mark (``VmHWM``), reset on entry through ``/proc/self/clear_refs``;
    no sampling thread, which would compete for the GIL with the pruners' Python loops. Elsewhere: a
    thread sampling psutil every 20 ms.
    """

    def __init__(self):
        self.start = self.peak = 0

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(field)

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = self._status_kb("VmRSS")
            self._thread = None
        except OSError:
            import psutil

            proc, self._stop = psutil.Process(), threading.Event()
            self.start = self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            self.peak = self._status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()


def build(shape: str, device: torch.device, dtype: torch.dtype, layers: int | None, seed: int):
    overrides = {"num_hidden_layers": layers} if layers else {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_llama(shape, seed=seed, **overrides)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def bench_one(args, method: str, device: torch.device, dtype: torch.dtype) -> dict:
    model = build(args.shape, device, dtype, args.layers, args.seed)
    n_layers = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(args.seed)
    calib = torch.randint(0, model.config.vocab_size, (args.num_samples, args.seq_len), generator=g)
    gc.collect()
    kwargs = dict(calibration=calib if PRUNERS[method].statistic else None, num_samples=args.num_samples,
                  seq_len=args.seq_len, batch_size=args.batch_size, progress=not args.no_progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = prune_model(model, method, args.sparsity, args.structure, **kwargs)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
    else:
        with RssPeak() as rss:
            start = time.perf_counter()
            result = prune_model(model, method, args.sparsity, args.structure, **kwargs)
            elapsed = time.perf_counter() - start
        base, peak = rss.start, rss.peak
    n_prunable = sum(p.numel() for p in prunable_parameters(model).values())
    row = {"method": method, "structure": result.structure, "sparsity": round(result.sparsity, 4),
           "layers": n_layers, "time_s": elapsed, "s_per_layer": elapsed / n_layers, "peak_gb": peak / GB,
           "over_model_gb": (peak - base) / GB, "prunable_params": n_prunable}
    del model, result
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small", choices=sorted(MODEL_SHAPES))
    p.add_argument("--methods", nargs="+", default=sorted(PRUNERS), choices=sorted(PRUNERS))
    p.add_argument("--sparsity", type=float, default=None, help="default 0.5 (or implied by --structure)")
    p.add_argument("--structure", default="unstructured")
    p.add_argument("--num-samples", type=int, default=None, help="default 128 on GPU, 32 on CPU")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 on GPU, 256 on CPU")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=None, help="build only this many decoder layers")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default bfloat16 on GPU, float32 on CPU")
    p.add_argument("--repeat", type=int, default=None, help="runs per method, the fastest is shown "
                   "(default 3 on CPU, 1 on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    args.num_samples = args.num_samples or (128 if gpu else 32)
    args.seq_len = args.seq_len or (2048 if gpu else 256)
    args.repeat = args.repeat or (1 if gpu else 3)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# pruning benchmark: shape {args.shape}{f' ({args.layers} layers)' if args.layers else ''}, {dtype}, "
          f"{where}, torch {torch.__version__}; calibration {args.num_samples} x {args.seq_len} tokens, "
          f"batch {args.batch_size}; fastest of {args.repeat} run(s)")
    for m in args.methods:  # one-time costs (kernels, thread pools) out of the timings
        prune_model(build("tiny", device, dtype, None, args.seed), m, calibration=torch.randint(0, 100, (2, 16)),
                    progress=False)
    rows = []
    for m in args.methods:  # the fastest of --repeat runs (a shared machine adds noise, never speed)
        runs = [bench_one(args, m, device, dtype) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["time_s"])
        best.update(peak_gb=max(r["peak_gb"] for r in runs), over_model_gb=max(r["over_model_gb"] for r in runs))
        rows.append(best)
    mem = "peak GPU mem (GB)" if gpu else "peak RSS (GB)"
    print(f"\n| method | structure | sparsity | layers | time (s) | s/layer | {mem} | over model (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['structure']} | {r['sparsity']:.4f} | {r['layers']} | {r['time_s']:.2f} | "
              f"{r['s_per_layer']:.3f} | {r['peak_gb']:.2f} | {r['over_model_gb']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": where, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
