"""The study of issue 17 (README "Does SAU help?"): run its recipes and print its verdict tables.

    python benchmarks/study.py run [NAME ...] [--root outputs/study]   # run the study's recipes (all by default)
    python benchmarks/study.py report [--root outputs/study]          # the tables, from the report.json files
    python benchmarks/study.py list                                    # each part's command

Each part is a committed recipe under ``recipes/study/`` plus overrides, run into ``ROOT/NAME``. ``run`` first
hard-links the target, retain and pruned models (and their evaluations) of ``ROOT/base`` into the part's
``stages/`` folder: the stage cache checks each task's hash, so they are reused exactly where the settings
match and recomputed otherwise (SPEC section 8: one output folder's cache keeps runs consistent).

The tables follow SPEC section 7: for each seed, each side's curve over learning rates is read where its model
utility falls to the floor (linear interpolation), the two sides are paired by seed, and the verdict comes
from a 95% t interval of the paired difference (``sau_trainer.pipeline.comparisons.compare``). The floor is 90%
of the *starting* model's utility (the pruned model before unlearning), so a pruned model that already lies
below 90% of the dense model's utility still has a curve to read; ``--floor dense`` uses the dense finetuned
model's utility as the report does. Forget quality is compared as log10 (higher: closer to the retain model),
forget ROUGE as is (lower: more forgotten). A difference whose whole interval lies within +-0.001 is "same".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, also when run as a script from anywhere
RECIPES = ROOT / "recipes" / "study"

# name -> (recipe, overrides, what it measures). "base" holds the plain baseline every SAU variant is compared with.
PARTS: dict[str, tuple[str, list[str], str]] = {
    "capacity": ("capacity.yaml", [], "what pruning costs: magnitude/wanda/sparsegpt at 50/70/90%, no unlearning"),
    "capacity-2of4": ("capacity.yaml", ["prune.structure=2:4"], "what 2:4 pruning costs"),
    "base": ("base.yaml", [], "plain and SAU (k 0.3, alpha 0.1, grad mode, matrix scope); dense plain"),
    "k0.1": ("variant.yaml", ["unlearn.sau_topk=0.1"], "k = 0.1"),
    "k0.5": ("variant.yaml", ["unlearn.sau_topk=0.5"], "k = 0.5"),
    "k1.0": ("variant.yaml", ["unlearn.sau_topk=1.0"], "k = 1.0 (every survivor, W only)"),
    "alpha0.1-update": ("variant.yaml", ["unlearn.sau_alpha=0.1", "unlearn.sau_redistribution_target=update"],
                        "alpha 0.1, update mode"),
    "alpha1-update": ("variant.yaml", ["unlearn.sau_alpha=1.0", "unlearn.sau_redistribution_target=update"],
                      "alpha 1, update mode"),
    "alpha3-update": ("variant.yaml", ["unlearn.sau_alpha=3.0", "unlearn.sau_redistribution_target=update"],
                      "alpha 3, update mode"),
    "row": ("variant.yaml", ["unlearn.sau_topk_scope=row", "unlearn.sau_redistribution=row"],
            "row scope (G and W per output row)"),
    "retain-aware": ("variant.yaml", ["unlearn.saliency_retain_aware=true"], "(a) retain-aware saliency"),
    "moving": ("variant.yaml", ["unlearn.sau=[false,true]", "unlearn.sau_moving_mask=matrix"],
               "(b) moving mask (plain and SAU)"),
    "mass0.5": ("variant.yaml", ["unlearn.sau_topk_mass=0.5"], "(c) adaptive k: half the saliency mass"),
    "sparsity": ("base.yaml", ["prune.sparsity=[0.5,0.9]", "unlearn.model=[sparse]"],
                 "magnitude 50% and 90%: plain and SAU"),
    "pruners": ("base.yaml", ["prune.method=[wanda,sparsegpt]", "unlearn.model=[sparse]"],
                "wanda and sparsegpt 70%: plain and SAU"),
    "2of4": ("base.yaml", ["prune.structure=2:4", "unlearn.model=[sparse]"], "magnitude 2:4: plain and SAU"),
}
# A second objective for the settings that looked best with NPO (same design; GradDiff's learning rates, chosen
# from the demo so that the curves cross the floor).
GRADDIFF = ["unlearn.objective=[graddiff]", "unlearn.learning_rate=[3.0e-4,6.0e-4,1.0e-3,2.0e-3]"]
PARTS |= {
    "graddiff": ("base.yaml", GRADDIFF, "GradDiff: plain and SAU; dense plain"),
    "graddiff-k0.1": ("variant.yaml", [*GRADDIFF, "unlearn.sau_topk=0.1"], "GradDiff, k = 0.1"),
    "graddiff-retain-aware": ("variant.yaml", [*GRADDIFF, "unlearn.saliency_retain_aware=true"],
                              "GradDiff, (a) retain-aware saliency"),
    "graddiff-mass0.5": ("variant.yaml", [*GRADDIFF, "unlearn.sau_topk_mass=0.5"], "GradDiff, (c) adaptive k 0.5"),
}
# The GPU suite (recipes/study/gpu-llama-3.2-1b.yaml): the same parts on a 1B model, and bf16-kahan: the plain grid
# with bf16 weights and Kahan-compensated AdamW instead of fp32 master weights (the sparsity penalty both ways).
GPU_RECIPE = "gpu-llama-3.2-1b.yaml"
GPU_ONLY_PARTS = {"bf16-kahan": (GPU_RECIPE, ["unlearn.sau=[false]", "unlearn.low_precision_weights=keep",
                                              "unlearn.compensated_optimizer=kahan_adamw"],
                                 "plain, bf16 weights with Kahan-compensated AdamW (vs fp32 master weights)")}
SHARED_STAGES = ("tokenizer", "models/finetuned", "models/retain", "eval/finetuned", "eval/retain")
# A difference whose whole 95% interval lies within +-SAME_MARGIN is reported as "same", whatever its sign: settings
# that change almost nothing (k = 1 in grad mode, a mask that never moves) give runs that differ in the fourth decimal
# with a tiny spread over seeds, and a bare t interval would call that "better" or "worse".
SAME_MARGIN = 1e-3
METRICS = (("forget_quality", "max", True, "log10 FQ"), ("forget_rouge", "min", False, "forget ROUGE"))


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


def suite_parts(suite: str) -> list[str]:
    return list(PARTS) + (list(GPU_ONLY_PARTS) if suite == "gpu" else [])


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


def run(names: list[str], root: Path, suite: str = "cpu") -> None:
    for name in names or suite_parts(suite):
        out = root / name
        for src in ("capacity", "base"):
            if src != name and (root / src).is_dir():
                print(f"[{name}] linked {seed_cache(root / src, out)} stages of {root / src}", flush=True)
        start = time.time()
        cmd = command(name, root, suite)
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"[{name}] exit {rc} after {time.time() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------- tables
def load_rows(root: Path) -> tuple[list[dict], dict[tuple, float]]:
    """Every run row of every part (tagged with ``part``), and the starting models' utility by (pruning, sparsity)."""
    rows, start_utility = [], {}
    for name in [*PARTS, *GPU_ONLY_PARTS]:
        path = root / name / "report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        rows += [dict(r, part=name) for r in report["runs"] if not r.get("unlearn_then_prune")]
        for ref in report["references"]:
            if ref["model"] == "finetuned":
                start_utility[(ref["pruning"], ref["target_sparsity"])] = ref["metrics"]["model_utility"]
    return rows, start_utility


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


FIXED_PLAIN_PARTS = ("base", "sparsity", "pruners", "2of4", "graddiff")  # whose plain runs are the fixed-mask baseline


def _compare(a_rows: list[dict], b_rows: list[dict], floor: float) -> dict:
    from sau_trainer.pipeline.comparisons import compare

    ids_a, ids_b = {id(r) for r in a_rows}, {id(r) for r in b_rows}
    out = {}
    for metric, better, log, _ in METRICS:
        res = compare(a_rows + b_rows, lambda r: id(r) in ids_a, lambda r: id(r) in ids_b, metric=metric,
                      floor=floor, better=better, log=log)
        ci = res.get("ci95")
        if ci and res["paired_seeds"] >= 3 and -SAME_MARGIN <= ci[0] and ci[1] <= SAME_MARGIN:
            res["verdict"] = "same"  # near-deterministic runs: a tiny interval off 0 is no practical difference
        out[metric] = res
    return out


def comparison_rows(rows: list[dict], start_utility: dict, floor_of: str) -> list[dict]:
    """Every SAU setting (and plain with the moving mask) against the fixed-mask plain runs on the same pruned
    model; then every sparse plain and SAU default against the dense plain runs (at the dense model's floor)."""
    out = []
    dense_u = start_utility.get((None, 0.0))
    sparse = [r for r in rows if r["model"] == "sparse"]
    for obj, pruning, sp in sorted({(r["objective"], r["pruning"], r["target_sparsity"]) for r in sparse}, key=str):
        u0 = start_utility.get((pruning, sp)) if floor_of == "start" else dense_u
        same = [r for r in sparse if r["pruning"] == pruning and r["target_sparsity"] == sp and r["objective"] == obj]
        plain = [r for r in same if r["part"] in FIXED_PLAIN_PARTS and not r["sau"]]
        if u0 is None or not plain:
            continue
        for part in sorted({r["part"] for r in same} - set(GPU_ONLY_PARTS), key=list(PARTS).index):
            for sau in (True, False):
                if part in FIXED_PLAIN_PARTS and not sau:
                    continue
                a_rows = [r for r in same if r["part"] == part and r["sau"] == sau]
                if a_rows:
                    label = ("SAU" if sau else "plain") + ("" if part in FIXED_PLAIN_PARTS else f" [{part}]")
                    out.append({"start": f"{pruning} {sp:.0%}", "start_utility": u0, "setting": label,
                                "objective": obj, "against": "plain", **_compare(a_rows, plain, 0.9 * u0)})
                    sau_default = [r for r in same if r["part"] in FIXED_PLAIN_PARTS and r["sau"]]
                    if sau and part not in FIXED_PLAIN_PARTS and sau_default:  # which choices matter
                        out.append({"start": f"{pruning} {sp:.0%}", "start_utility": u0, "setting": label,
                                    "objective": obj, "against": "SAU",
                                    **_compare(a_rows, sau_default, 0.9 * u0)})
    # the sparsity penalty: sparse runs against the dense plain runs of the same part (base, or bf16-kahan)
    for dense_part in ("base", "graddiff", *GPU_ONLY_PARTS):
        dense_plain = [r for r in rows if r["model"] == "dense" and not r["sau"] and r["part"] == dense_part]
        if dense_u is None or not dense_plain:
            continue
        obj = dense_plain[0]["objective"]
        parts = tuple(p for p in FIXED_PLAIN_PARTS if p != "graddiff") if dense_part == "base" else (dense_part,)
        tag = "" if dense_part in ("base", "graddiff") else f" [{dense_part}]"
        sparse_obj = [r for r in sparse if r["objective"] == obj]
        for pruning, sp in sorted({(r["pruning"], r["target_sparsity"]) for r in sparse_obj}, key=str):
            # one floor for both sides: the sparse start's (a pruned model below the dense floor never reaches it)
            u0 = start_utility.get((pruning, sp)) if floor_of == "start" else dense_u
            for sau in (False, True):
                a_rows = [r for r in sparse_obj if r["pruning"] == pruning and r["target_sparsity"] == sp
                          and r["sau"] == sau and r["part"] in parts]
                if a_rows and u0 is not None:
                    out.append({"start": f"{pruning} {sp:.0%}", "start_utility": u0, "objective": obj,
                                "setting": ("SAU" if sau else "plain") + tag, "against": "dense plain" + tag,
                                **_compare(a_rows, dense_plain, 0.9 * u0)})
    return out


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


def render(root: Path, floor_of: str = "start") -> str:
    rows, start_utility = load_rows(root)
    capacity = render_capacity(root)
    if not rows:
        return "\n".join(capacity) or f"no report.json under {root}: run `python benchmarks/study.py run` first"
    lines = capacity + [f"Utility floor: 90% of the {'starting (pruned) model' if floor_of == 'start' else 'dense finetuned model'}"
             "'s model utility; mean over seeds where a curve reaches it; diff = setting - baseline, 95% t interval "
             "over paired seeds.", ""]
    lines.append("| objective | start (floor utility / 0.9) | setting | vs | log10 FQ: setting / base | diff [95% CI] | verdict "
                 "| forget ROUGE: setting / base | diff [95% CI] | verdict | seeds |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in comparison_rows(rows, start_utility, floor_of):
        fq, fr = c["forget_quality"], c["forget_rouge"]

        def cells(r):
            ci = r.get("ci95")
            ci_s = "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
            return [f"{_fmt(r.get('a_mean'))} / {_fmt(r.get('b_mean'))}",
                    f"{'n/a' if r.get('diff_mean') is None else format(r['diff_mean'], '+.3f')} {ci_s}", r["verdict"]]

        lines.append("| " + " | ".join([c["objective"], f"{c['start']} ({c['start_utility']:.3f})", c["setting"], c["against"],
                                        *cells(fq), *cells(fr), f"{fq['paired_seeds']}/{fq['seeds']}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("run", "report", "list"))
    p.add_argument("names", nargs="*", help=f"parts to run (default: all of the suite): {', '.join(PARTS)}; gpu "
                   f"also {', '.join(GPU_ONLY_PARTS)}")
    p.add_argument("--root", type=Path, default=ROOT / "outputs" / "study")
    p.add_argument("--floor", choices=("start", "dense"), default="start")
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the built-in benchmark's tiny Llama; gpu: recipes/study/gpu-llama-3.2-1b.yaml")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in suite_parts(a.suite)]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}; choose from {', '.join(suite_parts(a.suite))}")
    if a.action == "list":
        for name in suite_parts(a.suite):
            print(f"{name:16s} {part(name, a.suite)[2]}\n    sau-trainer "
                  f"{' '.join(command(name, Path('outputs/study' + ('-gpu' if a.suite == 'gpu' else '')), a.suite)[3:])}")
    elif a.action == "run":
        run(a.names, a.root, a.suite)
    else:
        print(render(a.root, a.floor))


if __name__ == "__main__":
    main()
