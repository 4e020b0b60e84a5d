"""The study (README "Does SAU help?"): run its recipes and print its verdict tables.

    python benchmarks/study.py run [NAME ...] [--root outputs/study] [--workers 2]   # run the study's parts
    python benchmarks/study.py report [--root outputs/study]                          # the tables, from report.json
    python benchmarks/study.py list                                                   # each part's command

Each part is a committed recipe under ``recipes/study/`` plus overrides, run into ``ROOT/NAME``. ``run`` first
hard-links the target, retain and pruned models (and their evaluations) of ``ROOT/base`` into the part's
``stages/`` folder: the stage cache checks each task's hash, so they are reused exactly where the settings
match and recomputed otherwise (SPEC section 8: one output folder's cache keeps runs consistent). ``--workers N``
runs N processes on each part's output directory at once (``--tasks '*'``: each takes the tasks the others are
not running).

The verdicts are the pipeline's own (report.json ``comparisons``, SPEC section 7): each method x seed pools the
evaluations of all its runs (the trajectories: at step 0, every quarter of the run, at the end), its frontier
(the most forgetting at utility >= u) is averaged over the utility band [0.85, 0.95] x the comparison's starting
model's utility, the two methods are paired by seed, and the verdict comes from a 95% t interval of the paired
difference; ``fragile`` marks a verdict that flips at a single floor inside the band or with one learning rate
left out. ``report`` also re-reads every comparison of ``base`` on other grids (the first study's 4 rates, the 5
rates that flipped its verdict), on seed subsets and on two other bands, and says whether its verdict holds.
Forget quality is compared as log10 (higher: closer to the retain model), forget ROUGE as is (lower: more
forgotten).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, also when run as a script from anywhere
RECIPES = ROOT / "recipes" / "study"

# name -> (recipe, overrides, what it measures). "base" holds the plain runs every SAU setting on the magnitude-70
# model is compared with, and the dense plain runs (the sparsity penalty).
PARTS: dict[str, tuple[str, list[str], str]] = {
    "base": ("base.yaml", [], "NPO, magnitude 70%: plain and SAU (defaults), 7 learning rates; dense plain"),
    "graddiff": ("base.yaml", ["unlearn.objective=[graddiff]", "unlearn.model=[sparse]", "unlearn.exclude=null",
                               "unlearn.learning_rate=[5.0e-4,1.0e-3,2.0e-3]"],
                 "GradDiff, magnitude 70%: plain and SAU, 3 learning rates"),
    "wanda": ("base.yaml", ["prune.method=[wanda]", "unlearn.model=[sparse]", "unlearn.exclude=null",
                            "unlearn.learning_rate=[2.0e-4,4.5e-4,1.0e-3]"],
              "NPO, wanda 70% (a calibrated pruner): plain and SAU, 3 learning rates"),
    "capacity": ("capacity.yaml", [], "what pruning costs: magnitude/wanda/sparsegpt at 50/70/90%, no unlearning"),
}
# The first study's variants, one SAU setting changed at a time (SAU runs only, against base's plain runs); not run
# by default (`run k0.1 ...` runs them).
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "k0.1": ("variant.yaml", ["unlearn.sau_topk=0.1"], "k = 0.1"),
    "k1.0": ("variant.yaml", ["unlearn.sau_topk=1.0"], "k = 1.0 (every survivor, W only)"),
    "alpha1-update": ("variant.yaml", ["unlearn.sau_alpha=1.0", "unlearn.sau_redistribution_target=update"],
                      "alpha 1, update mode"),
    "row": ("variant.yaml", ["unlearn.sau_topk_scope=row", "unlearn.sau_redistribution=row"],
            "row scope (G and W per output row)"),
    "retain-aware": ("variant.yaml", ["unlearn.saliency_retain_aware=true"], "(a) retain-aware saliency"),
    "moving": ("variant.yaml", ["unlearn.sau=[false,true]", "unlearn.sau_moving_mask=matrix"],
               "(b) moving mask (plain and SAU)"),
    "mass0.5": ("variant.yaml", ["unlearn.sau_topk_mass=0.5"], "(c) adaptive k: half the saliency mass"),
    "capacity-2of4": ("capacity.yaml", ["prune.structure=2:4"], "what 2:4 pruning costs"),
}
DEFAULT_PARTS = tuple(PARTS)
PARTS |= VARIANTS
# The GPU suite (recipes/study/gpu-llama-3.2-1b.yaml): the same parts on a 1B model, and bf16-kahan: the plain grid
# with bf16 weights and Kahan-compensated AdamW instead of fp32 master weights (the sparsity penalty both ways).
GPU_RECIPE = "gpu-llama-3.2-1b.yaml"
GPU_ONLY_PARTS = {"bf16-kahan": (GPU_RECIPE, ["unlearn.sau=[false]", "unlearn.low_precision_weights=keep",
                                              "unlearn.compensated_optimizer=kahan_adamw"],
                                 "plain, bf16 weights with Kahan-compensated AdamW (vs fp32 master weights)")}
SHARED_STAGES = ("tokenizer", "models/finetuned", "models/retain", "eval/finetuned", "eval/retain")


def part(name: str, suite: str = "cpu") -> tuple[str, list[str], str]:
    """(recipe, overrides, description) of a part in a suite."""
    if suite == "cpu":
        return PARTS[name]
    if name in GPU_ONLY_PARTS:
        return GPU_ONLY_PARTS[name]
    recipe, overrides, what = PARTS[name]
    overrides = [o for o in overrides if not o.startswith("unlearn.learning_rate=")]  # the GPU recipe's own lrs
    if recipe == "variant.yaml":  # the GPU recipe holds both models and both modes: keep the variant's SAU runs
        overrides = ["unlearn.model=[sparse]", *([] if any(o.startswith("unlearn.sau=") for o in overrides)
                                                 else ["unlearn.sau=[true]"]), *overrides]
    return GPU_RECIPE, overrides, what


def suite_parts(suite: str, everything: bool = True) -> list[str]:
    """The parts of a suite: every part (`everything`), else the ones `run` runs by default."""
    parts = list(PARTS) if everything else list(DEFAULT_PARTS)
    return parts + (list(GPU_ONLY_PARTS) if suite == "gpu" else [])


def command(name: str, root: Path, suite: str = "cpu") -> list[str]:
    recipe, overrides, _ = part(name, suite)
    return [sys.executable, "-m", "sau_trainer", "run", f"recipes/study/{recipe}", "--output-dir", str(root / name),
            *overrides]


def seed_cache(base: Path, out: Path) -> int:
    """Hard-link the shared stages of `base` (models, references and their evaluations) into `out`."""
    linked = 0
    for kind in ("tokenizer", "models", "eval"):
        src = base / "stages" / kind
        if not src.is_dir():
            continue
        entries = [src] if kind == "tokenizer" else sorted(src.iterdir())
        for entry in entries:
            rel = entry.relative_to(base / "stages")
            if not any(str(rel) == s or str(rel).startswith(s + "+") for s in SHARED_STAGES):
                continue
            dest = out / "stages" / rel
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(entry, dest, copy_function=os.link)
            linked += 1
    return linked


def run(names: list[str], root: Path, suite: str = "cpu", workers: int = 1) -> None:
    for name in names or suite_parts(suite, everything=False):
        out = root / name
        for src in ("capacity", "base"):
            if src != name and (root / src).is_dir():
                print(f"[{name}] linked {seed_cache(root / src, out)} stages of {root / src}", flush=True)
        start = time.time()
        cmd = command(name, root, suite) + (["--tasks", "*"] if workers > 1 else [])
        print(f"[{name}] {' '.join(cmd[1:])}" + (f" (x{workers} workers)" if workers > 1 else ""), flush=True)
        procs = []
        for i in range(workers):
            procs.append(subprocess.Popen(cmd, cwd=ROOT))
            if i + 1 < workers:
                time.sleep(5)  # the first worker takes the first task's lock before the next one looks
        rcs = [p.wait() for p in procs]
        print(f"[{name}] exit {max(rcs)} after {time.time() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------- tables
def load_report(root: Path, name: str) -> dict | None:
    path = root / name / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(c: dict) -> str:
    ci = c.get("ci95")
    return "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _label(c: dict) -> str:
    start = "dense" if c["pruning"] is None else f"{c['pruning']} {c['target_sparsity']:.0%}"
    return f"{c['objective']}, {start}"


def _verdict(c: dict) -> str:
    v = c["verdict"]
    return f"{v} (fragile)" if c.get("fragile") else v


def comparison_lines(reports: dict[str, dict]) -> list[str]:
    """One table row per comparison (pair of methods x forget metric) of every part's report.json."""
    lines = ["| part | objective, start | a vs b | metric | a / b (band mean) | a - b [95% CI] | one step | verdict "
             "| paired seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for c in report.get("comparisons", []):
            res = c.get("resolution") or {}
            step = res.get("step")
            lines.append(f"| {name} | {_label(c)} | {c['a']} vs {c['b']} | {c['metric']} | {_fmt(c['a_mean'])} / "
                         f"{_fmt(c['b_mean'])} | {'n/a' if c['diff_mean'] is None else format(c['diff_mean'], '+.3f')} "
                         f"{_ci(c)} | {_fmt(step)} | {_verdict(c)} | {c['paired_seeds']}/{c['seeds']} |")
    return lines


# Other readings of the same runs: the verdict must survive a different grid, floor and seed set.
CHECKS: dict[str, dict] = {
    "first study's 4 rates (1e-4, 3e-4, 6e-4, 1e-3)": {"lrs": (1e-4, 3e-4, 6e-4, 1e-3)},
    "the 5 rates that flipped it (1e-4, 2e-4, 4.5e-4, 8e-4, 1e-3)": {"lrs": (1e-4, 2e-4, 4.5e-4, 8e-4, 1e-3)},
    "seeds 0-2": {"seeds": (0, 1, 2)},
    "seeds 2-4": {"seeds": (2, 3, 4)},
    "band [0.80, 0.90]": {"band": (0.80, 0.90)},
    "band [0.90, 0.98]": {"band": (0.90, 0.98)},
}


def _key(c: dict) -> tuple:
    return (c["pruning"], c["target_sparsity"], c["objective"], c["a"], c["b"], c["metric"])


def robustness_lines(report: dict, name: str = "base") -> list[str]:
    """The comparisons of one part re-read on sub-grids, seed subsets and other bands (`CHECKS`): a verdict holds
    when no reading gives the opposite decisive verdict. A sub-grid check that keeps fewer than two of the part's
    learning rates, or all of them, is n/a for that part."""
    from sau_trainer.benchmarks.tofu.report import TOFU_REPORT
    from sau_trainer.pipeline.frontier import DEFAULT_BAND
    from sau_trainer.pipeline.report_verdicts import band_comparisons

    if not report.get("comparisons"):
        return []
    spec = TOFU_REPORT  # every part runs the built-in benchmark (the TOFU protocol)
    runs = [r for r in report["runs"] if not r.get("unlearn_then_prune") and not r.get("attack_of")]
    main = {_key(c): c for c in report["comparisons"]}
    readings: dict[str, dict] = {}
    part_lrs = {r["learning_rate"] for r in runs}
    for label, check in CHECKS.items():
        kept = [x for x in check.get("lrs", ()) if any(math.isclose(x, lr, rel_tol=1e-6) for lr in part_lrs)]
        if "lrs" in check and (len(kept) < 2 or len(kept) == len(part_lrs)):
            readings[label] = {}  # not a sub-grid of this part's rates: n/a
            continue
        rows = [r for r in runs if ("lrs" not in check or any(math.isclose(r["learning_rate"], x, rel_tol=1e-6)
                                                              for x in kept))
                and ("seeds" not in check or r["seed"] in check["seeds"])]
        readings[label] = {_key(c): c for c in band_comparisons(rows, spec, check.get("band", DEFAULT_BAND))}
    lines = [f"Each comparison of `{name}` re-read from the same runs (a - b, verdict):", "",
             "| a vs b, metric | all (" + name + ") | " + " | ".join(readings) + " | holds |",
             "|---|---|" + "---|" * len(readings) + "---|"]
    for key, c in main.items():
        cells, verdicts = [], [c["verdict"]]
        for r in readings.values():
            o = r.get(key)
            if o is None or o["diff_mean"] is None:
                cells.append("n/a")
                continue
            cells.append(f"{o['diff_mean']:+.3f} {_verdict(o)}")
            verdicts.append(o["verdict"])
        holds = not ("better" in verdicts and "worse" in verdicts)
        lines.append(f"| {_label(c)}: {c['a']} vs {c['b']}, {c['metric']} | "
                     f"{'n/a' if c['diff_mean'] is None else format(c['diff_mean'], '+.3f')} {_verdict(c)} | "
                     + " | ".join(cells) + f" | {'yes' if holds else 'NO'} |")
    return lines + [""]


CAPACITY_COLUMNS = (("model utility", "model_utility"), ("forget ROUGE", "forget_rouge"),
                    ("forget prob.", "forget_probability"), ("retain ROUGE", "retain_rouge"),
                    ("retain prob.", "retain_probability"))


def render_capacity(root: Path) -> list[str]:
    """The starting models (finetuned, dense and pruned) of the capacity parts, before any unlearning."""
    refs = {}
    for name in ("capacity", "capacity-2of4"):
        path = root / name / "report.json"
        if path.is_file():
            for r in json.loads(path.read_text())["references"]:
                if r["model"] == "finetuned":
                    refs[(r["pruning"] or "dense", r["target_sparsity"])] = r
    if not refs:
        return []
    lines = ["| model | sparsity (measured) | " + " | ".join(c for c, _ in CAPACITY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(CAPACITY_COLUMNS)]
    for (pruning, sp), r in sorted(refs.items(), key=lambda kv: (kv[0][0] != "dense", kv[0][0], kv[0][1])):
        lines.append(f"| {pruning} | {sp:.0%} ({r['measured_sparsity']:.3f}) | "
                     + " | ".join(_fmt(r["metrics"].get(k)) for _, k in CAPACITY_COLUMNS) + " |")
    return lines + [""]


def render(root: Path) -> str:
    capacity = render_capacity(root)
    reports = {n: r for n in [*PARTS, *GPU_ONLY_PARTS] if (r := load_report(root, n)) and r.get("comparisons")}
    if not reports:
        return "\n".join(capacity) or f"no report.json under {root}: run `python benchmarks/study.py run` first"
    lines = capacity + ["Comparisons (report.json of each part): band mean of each method's frontier over [0.85, 0.95] "
                        "x the starting model's utility, paired by seed; a - b with its 95% t interval; one step: the "
                        "smallest move of the metric near the compared values (one forget example changing rank).",
                        ""]
    lines += comparison_lines(reports) + [""]
    for name, report in reports.items():
        lines += robustness_lines(report, name)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("run", "report", "list"))
    p.add_argument("names", nargs="*", help=f"parts to run (default: {', '.join(DEFAULT_PARTS)}; also {', '.join(VARIANTS)}); gpu "
                   f"also {', '.join(GPU_ONLY_PARTS)}")
    p.add_argument("--root", type=Path, default=ROOT / "outputs" / "study")
    p.add_argument("--workers", type=int, default=1, help="run: processes per part, sharing its output directory")
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the built-in benchmark's tiny Llama; gpu: recipes/study/gpu-llama-3.2-1b.yaml")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in suite_parts(a.suite)]
    if a.workers < 1:
        p.error(f"--workers must be at least 1, got {a.workers}")
    if unknown:
        p.error(f"unknown part {unknown[0]!r}; choose from {', '.join(suite_parts(a.suite))}")
    if a.action == "list":
        for name in suite_parts(a.suite):
            print(f"{name:16s} {part(name, a.suite)[2]}\n    sau-trainer "
                  f"{' '.join(command(name, Path('outputs/study' + ('-gpu' if a.suite == 'gpu' else '')), a.suite)[3:])}")
    elif a.action == "run":
        run(a.names, a.root, a.suite, a.workers)
    else:
        print(render(a.root))


if __name__ == "__main__":
    main()
