"""What keeping the sparsity costs (SPEC section 6, issue 11): the vanilla step, the plain masked step, the SAU step,
and each sparsity pass against its memory floor, in one run.

    python benchmarks/overhead.py                      # CPU default: a Llama with 70.8M prunable fp32 parameters,
                                                       # batch 4 x 256, AdamW, 50% magnitude sparsity
    python benchmarks/overhead.py --shape llama-3.1-8b --bf16 --optim adamw_bnb_8bit \\
        --batch-size 4 --seq-len 512 --gradient-checkpointing          # the SPEC's 8B setting on one GPU

Three trainers (four with the control) share one model, one batch and one optimizer kind (``--optim``, default the
one ``TrainingArguments`` picks: ``adamw_torch_fused`` with torch >= 2.8): ``transformers.Trainer`` (vanilla), the
same Trainer made `sparsity_preserving` (plain: the mask pass ``M`` after accumulation, the re-zero where the
optimizer needs it) and the same with an SAU state (``G`` and ``W`` in one pass, k=0.3, alpha=0.1, per-matrix W).
The control, a second vanilla Trainer doing identical work, shows how far two equal steps differ on this machine.

They run interleaved: ``--rounds`` rounds, each kind ``--steps`` steps per round, in orders from a Williams design
(over the counted rounds, with the default 9 rounds and 4 kinds: each kind twice in each position and twice right
after each other kind), so a noisy moment hits all kinds alike. On CPU each kind keeps its optimizer and its state from burst to burst, as one
training run does; on CUDA each burst builds its own (four optimizers' state would not fit beside an 8B model). A
step is timed from one step's start to the next step's start (everything the Trainer does between them counts):
``--steps`` steps give ``--steps - 1`` intervals per burst, of which the first is not counted, and the first round
(compilation, optimizer state allocation) is not counted. The table gives medians, each step ratio with a 95%
bootstrap interval (whole rounds resampled, all kinds' steps of a round together, as they share its noisy moments),
and where each kind's step goes: up to the optimizer step (forward, backward, the sparsity pass, clipping), the
optimizer step (torch's step; in ``update`` mode also the snapshot before it), and the rest up to the next step (the
re-zero where it runs, the scheduler, logging).

Each pass is then timed alone over the same gradients against the floor ``torch._foreach_mul_(grads, 0.999)``, one
read and one write of every prunable entry (the re-zero over the weights against the same floor over the weights).
The optimizer step is also timed alone on the same gradients, unmasked (the vanilla Trainer's optimizer) and then
masked (the plain one's: a sparse model's state, zero moments at pruned entries). On the development CPU torch's
foreach AdamW (``--optim adamw_torch``) measured 1.7x slower with masked gradients, the fused one not (README,
Performance).
Random weights and tokens: speed does not depend on what the model knows. Ratios first: absolute times on a shared
machine move with its load (printed with the table).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from sau_trainer import (
    fused,  # noqa: E402
    prune_model,  # noqa: E402
)
from sau_trainer.masks import SparsityMasks, prunable_parameters  # noqa: E402
from sau_trainer.modeling import MODEL_SHAPES, build_llama  # noqa: E402
from sau_trainer.precision import unwrap_optimizer  # noqa: E402
from sau_trainer.sau import SAUState, apply_sau_, build_sau_state  # noqa: E402
from sau_trainer.sparsity import sparsity_preserving  # noqa: E402

# The CPU default of issue 11: 10 blocks of (4 x 768^2 + 3 x 768 x 2048) = 70.8M prunable parameters.
SHAPES = {"cpu-70m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
                          num_key_value_heads=12, max_position_embeddings=512), **MODEL_SHAPES}


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Times from one step's start to the next step's start (the whole interval, nothing left out), and inside it
    where ``optimizer.step()`` begins and ends (given to the Trainer's constructor, this callback runs before the
    ones `sparsity_preserving` adds, so its two marks enclose torch's step, and in ``update`` mode the snapshot before it)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.reset()

    def reset(self) -> None:
        self.starts, self.pre, self.post = [], [], []

    def _mark(self, into: list) -> None:
        _sync(self.cuda)
        into.append(time.perf_counter())

    def on_step_begin(self, args, state, control, **kw):
        self._mark(self.starts)

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self._mark(self.pre)

    def on_optimizer_step(self, args, state, control, **kw):
        self._mark(self.post)

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]

    def phases(self) -> list[tuple[float, float, float]]:
        """Per interval: (start to the optimizer step, the optimizer step, its end to the next start)."""
        return [(p - a, q - p, b - q) for a, p, q, b in zip(self.starts, self.pre, self.post, self.starts[1:], strict=False)]


def ratio_interval(num: list[list[float]], den: list[list[float]], resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(num) / median(den) from per-round step times (``num[r]``, ``den[r]``: the
    steps of round ``r``): whole rounds are resampled with replacement, both kinds' steps of a drawn round together,
    because steps of one round share its noisy moments (resampling single steps would make the interval too narrow)."""
    rng = random.Random(seed)
    rounds = [r for r in range(min(len(num), len(den))) if num[r] and den[r]]
    ratios = []
    for _ in range(resamples):
        drawn = rng.choices(rounds, k=len(rounds))
        ratios.append(statistics.median(x for r in drawn for x in num[r]) /
                      statistics.median(x for r in drawn for x in den[r]))
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def round_order(kinds: list[str], r: int) -> list[str]:
    """Round ``r``'s order, from a Williams design (E. J. Williams, 1949): the row ``0, 1, n-1, 2, n-2, ...`` shifted by
    ``r``. For an even number of kinds every ``n`` consecutive rounds put each kind in each position once and each kind
    directly after each other kind once; for an odd number, every ``2n`` rounds do so twice (the row and its reverse
    alternate)."""
    n = len(kinds)
    base, lo, hi = [0], 1, n - 1
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    order = [kinds[(b + r) % n] for b in base]
    return order[::-1] if n % 2 and (r // n) % 2 else order


def sau_state_for(model, masks: SparsityMasks, k=0.3, alpha=0.1, seed=0) -> SAUState:
    """An SAU state with the shape of a real one (top-k of a random saliency among survivors, per-matrix W)."""
    g = torch.Generator().manual_seed(seed)
    params = prunable_parameters(model)
    saliency = {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in params.items()}
    from sau_trainer.masks import LazyMasks

    state = build_sau_state(saliency, LazyMasks(params, lambda n: masks.get(n, params[n].device)), k, alpha)
    return state.to(next(iter(params.values())).device)


def timeit(fn, repeat: int, cuda: bool) -> float:
    fn()
    times = []
    for _ in range(repeat):
        _sync(cuda)
        t = time.perf_counter()
        fn()
        _sync(cuda)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="cpu-70m", help=f"one of {sorted(SHAPES)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (the first is warm-up)")
    p.add_argument("--steps", type=int, default=5,
                   help="steps per kind per round: steps - 1 start-to-start intervals, the first of them not counted")
    p.add_argument("--pass-repeat", type=int, default=15)
    p.add_argument("--optim", default=TrainingArguments.__dataclass_fields__["optim"].default,
                   help="transformers optimizer name (default: TrainingArguments' own default)")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (needs a CUDA device)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--passes-only", action="store_true", help="skip the step timings (the passes alone)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control: a second vanilla Trainer, timed like the others, whose ratio to the first "
                        "shows how far two identical steps differ on this machine (the noise in the ratios above it)")
    a = p.parse_args()
    if a.bf16 and not torch.cuda.is_available():
        p.error("--bf16 needs a CUDA device (the CPU timings are fp32); leave it out here.")
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"

    model = build_llama(SHAPES[a.shape], vocab_size=a.vocab_size, max_position_embeddings=max(a.seq_len, 64), seed=0)
    if a.bf16:
        model = model.to(torch.bfloat16)
    model.to(device)
    prune_model(model, "magnitude", sparsity=a.sparsity)
    params = prunable_parameters(model)
    n_prunable = sum(p_.numel() for p_ in params.values())
    masks = SparsityMasks.from_model(model)
    state = sau_state_for(model, masks)
    ids = torch.randint(5, a.vocab_size, (a.batch_size, a.seq_len), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": r, "labels": r, "attention_mask": torch.ones_like(r)} for r in ids]

    out = tempfile.mkdtemp()
    clocks, trainers = {}, {}
    kinds = ("vanilla", "plain", "SAU") + (("control",) if a.control else ())
    for kind in kinds:
        args = TrainingArguments(
            output_dir=os.path.join(out, kind), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
            learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], save_strategy="no",
            disable_tqdm=True, logging_steps=10_000, optim=a.optim, bf16=a.bf16, use_cpu=not cuda,
            gradient_checkpointing=a.gradient_checkpointing, dataloader_drop_last=True, seed=0)
        # Speed does not depend on whether bf16 updates land: keep the SPEC's setting (bf16 weights, 8-bit AdamW)
        # instead of upcasting the shared model to fp32 master weights (sau_trainer.precision).
        args.low_precision_weights = "keep"
        clocks[kind] = StepClock(cuda)
        kw = dict(model=model, args=args, train_dataset=rows, callbacks=[clocks[kind]])
        if kind in ("vanilla", "control"):
            trainers[kind] = Trainer(**kw)
        else:
            cls = sparsity_preserving(Trainer)
            trainers[kind] = cls(**kw, sparsity_masks=masks, sau_state=state if kind == "SAU" else None)
    # ---- first calls: compiling the kernels (a one-time cost per process; inductor's disk cache shortens it)
    batch = {k: torch.stack([row[k] for row in rows]).to(device) for k in rows[0]}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=a.bf16):
        model(**batch).loss.backward()
    first = {}
    for name, fn in (("mask pass", trainers["plain"]._mask_gradients), ("SAU pass", trainers["SAU"]._mask_gradients),
                     ("re-zero", lambda: masks.apply_(model, params))):
        _sync(cuda)
        t0 = time.perf_counter()
        fn()
        _sync(cuda)
        first[name] = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)

    by_round: dict[str, list[list[float]]] = {k: [] for k in trainers}  # kind -> counted rounds -> step times
    phases: dict[str, list[tuple[float, float, float]]] = {k: [] for k in trainers}
    rezero = None
    for r in range(0 if a.passes_only else a.rounds):
        for kind in round_order(list(trainers), r):
            trainer = trainers[kind]
            clocks[kind].reset()
            trainer.train()
            model.zero_grad(set_to_none=True)
            if r > 0:
                by_round[kind].append(clocks[kind].intervals()[1:])
                phases[kind] += clocks[kind].phases()[1:]
            if kind == "plain":
                rezero = trainer._rezero_needed()
            # CPU: the next burst goes on with this optimizer and its state (train() wraps it again: unwrap it);
            # CUDA: freed, the next burst builds its own. A new constant schedule each time.
            if cuda:
                trainer.accelerator.free_memory()  # accelerate holds what it prepared: drop it, or all four stay
                trainer.optimizer = trainer.lr_scheduler = None
                gc.collect()
                torch.cuda.empty_cache()
            else:
                trainer.optimizer, trainer.lr_scheduler = unwrap_optimizer(trainer.optimizer), None
    steps = {k: [x for burst in v for x in burst] for k, v in by_round.items()}
    step = {k: statistics.median(v) if v else float("nan") for k, v in steps.items()}

    # ---- each pass alone, over the same tensors
    plain, sau = trainers["plain"], trainers["SAU"]
    with torch.autocast(device, dtype=torch.bfloat16, enabled=a.bf16):
        model(**batch).loss.backward()
    grads = [p_.grad for p_ in params.values()]
    weights = [p_.data for p_ in params.values()]
    floor = timeit(lambda: torch._foreach_mul_(grads, 0.999), a.pass_repeat, cuda)
    floor_w = timeit(lambda: torch._foreach_mul_(weights, 1.0), a.pass_repeat, cuda)

    def copy_and_pass_floor() -> float:
        """What update-mode W with a dense W must move: a copy of the weights, then one pass reading weights and copy."""
        buffers = [w.clone() for w in weights]
        return timeit(lambda: (torch._foreach_copy_(buffers, weights), torch._foreach_lerp_(weights, buffers, 1.0)),
                      a.pass_repeat, cuda)

    floor_update = copy_and_pass_floor()

    def old_mask_pass():  # the previous implementation: unpack to bool, masked_fill_
        for n, p_ in params.items():
            p_.grad.masked_fill_(~masks.get(n, device), 0.0)

    def old_sau_pass():
        for n, p_ in params.items():
            apply_sau_(p_.grad, state.mask(n, device), state.weight(n))

    snap = {}

    def update_pass():  # update-mode W: the dense snapshot before the step and the scaled step after it
        for n, p_ in params.items():
            snap[n] = p_.detach().clone()
        for n, p_ in params.items():
            fused.scale_update_(p_.data, snap[n], state.planes(n, device), state.weight(n))

    t_update = timeit(update_pass, max(3, a.pass_repeat // 3), cuda)
    snap.clear()
    passes = {  # label -> (time, floor)
        "mask pass (plain) / floor": (timeit(plain._mask_gradients, a.pass_repeat, cuda), floor),
        "SAU pass (G and W) / floor": (timeit(sau._mask_gradients, a.pass_repeat, cuda), floor),
        "re-zero (weights) / weights floor": (timeit(lambda: masks.apply_(model, params), a.pass_repeat, cuda),
                                              floor_w),
        "update W, dense (row/param) / floor": (t_update, floor_w),
        "  the same / copy + pass floor": (t_update, floor_update),  # what update mode must move, by its nature
        "previous mask pass / floor": (timeit(old_mask_pass, max(3, a.pass_repeat // 3), cuda), floor),
        "previous SAU pass / floor": (timeit(old_sau_pass, max(3, a.pass_repeat // 3), cuda), floor),
    }
    # ---- torch's optimizer step alone on one set of gradients: unmasked with the vanilla Trainer's optimizer (its state
    # saw every gradient), then the same gradients masked with the plain one's (a sparse model's state: zero moments
    # at pruned entries). On CPU these are the optimizers the bursts used; otherwise each is built here (its first,
    # untimed step allocates its state) and freed after.
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=a.bf16):
        model(**batch).loss.backward()
    opt_step = {}
    for kind in ("vanilla", "plain"):
        if kind == "plain":
            plain._mask_gradients()
        optimizer = unwrap_optimizer(trainers[kind].create_optimizer())
        opt_step[kind] = timeit(optimizer.step, max(3, a.pass_repeat // 3), cuda)
        del optimizer
        if cuda:
            trainers[kind].accelerator.free_memory()
            trainers[kind].optimizer = None
            gc.collect()
            torch.cuda.empty_cache()
    model.zero_grad(set_to_none=True)

    mask_bytes = masks.nbytes() + sum(v.numel() for v in state.selected.values())
    w_bytes = sum(v.numel() * v.element_size() for v in state.weights.values())

    load = os.getloadavg()
    print(f"\nshape={a.shape} ({n_prunable / 1e6:.1f}M prunable) batch={a.batch_size}x{a.seq_len} optim={a.optim} "
          f"bf16={a.bf16} checkpointing={a.gradient_checkpointing} device={device} "
          f"threads={torch.get_num_threads()} kernels={fused.compile_status()} re-zero={dict([(None, '-'), (True, 'on'), (False, 'skipped')])[rezero]}")
    print(f"{len(steps['plain'])} timed steps per kind over {len(by_round['plain'])} counted interleaved rounds "
          f"({a.steps} steps per burst: {a.steps - 1} intervals, the first not counted); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'':34} {'ratio':>8} {'95% interval':>15} {'time':>10}  against")

    def step_row(label: str, num: str, den: str, note: str = "") -> None:
        if not (steps[num] and steps[den]):
            return
        lo, hi = ratio_interval(by_round[num], by_round[den])
        print(f"{label:34} {step[num] / step[den]:>8.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {step[num]:>9.3f}s  "
              f"{den} {step[den]:.3f}s{note}")

    step_row("plain step / vanilla step", "plain", "vanilla")
    step_row("SAU step / plain step", "SAU", "plain")
    if "control" in step:
        step_row("control (vanilla again) / vanilla", "control", "vanilla", "  (identical work: the noise)")
    for name, (t, fl) in passes.items():
        print(f"{name:34} {t / fl:>8.2f} {'':>15} {t * 1e3:>8.1f}ms  floor {fl * 1e3:.1f}ms")
    print(f"{'optimizer step, masked / unmasked':34} {opt_step['plain'] / opt_step['vanilla']:>8.2f} {'':>15} "
          f"{opt_step['plain'] * 1e3:>8.1f}ms  unmasked {opt_step['vanilla'] * 1e3:.1f}ms  ({a.optim}, same gradients)")
    print(f"{'M + G bytes per prunable param':34} {mask_bytes / n_prunable:>8.3f}")
    print(f"{'  + W (per-matrix) bytes per param':34} {(mask_bytes + w_bytes) / n_prunable:>8.3f}")
    print("first calls (compiling included): " + ", ".join(f"{k} {v:.1f}s" for k, v in first.items()))
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB")
    print(f"where a step goes (medians)  {'up to opt. step':>16} {'optimizer step':>15} {'rest':>8}"
          "   (up to: forward, backward, the pass, clipping)")
    for k, v in phases.items():
        if v:
            print(f"  {k:27} " + " ".join(f"{statistics.median(x[i] for x in v):>{w}.3f}s"
                                         for i, w in ((0, 15), (1, 14), (2, 7))))
    if any(steps.values()):
        print("step min/max: " + ", ".join(f"{k} {min(v):.3f}-{max(v):.3f}s" for k, v in steps.items() if v))


if __name__ == "__main__":
    main()
