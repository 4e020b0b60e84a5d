"""Pushing an unlearned sparse model to the Hugging Face Hub: the upload folder, its model card, the upload.

The folder holds the model (safetensors with explicit zeros), the tokenizer, ``sparsity.json`` (measured
from the weights), the bit-packed masks, ``results.json`` and a ``README.md`` model card whose YAML
metadata carries tags, base model, datasets and metrics. ``sau-trainer push DIR --repo-id ...`` pushes a
saved model directory or one run of a pipeline output directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .clitools import _looks_like_path
from .redact import TOKEN_VALUE, local_roots, redact

logger = logging.getLogger(__name__)
# torch, transformers, safetensors, the Hub library, the pipeline and the benchmarks are imported where they are
# used: `sau-trainer push --help` loads this module and must not load them (tests/test_cli_startup.py).

SKIP_FILES = {"stage.json", "training_args.bin", "README.md", "results.json"}
CARD_METRICS = (
    ("forget_quality", "Forget quality (KS p-value vs retain model)"),
    ("forget_quality_pruned_retain", "Forget quality vs the pruned retain model"),
    ("model_utility", "Model utility"),
    ("forget_rouge", "Forget ROUGE-L recall"),
    ("forget_probability", "Forget probability"),
    ("extraction_strength", "Extraction strength"),
    ("retain_rouge", "Retain ROUGE-L recall"),
)


class PushError(RuntimeError):
    """The upload failed; the local folder is intact and the message says how to retry."""


# ----------------------------------------------------------------------------------------- sparsity from weights
def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file (single file or sharded with an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir} has no model.safetensors (or index): not a saved model directory.")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {k: single for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def zero_counts(model_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """(exact zeros, entries) of every prunable matrix, read from the saved safetensors.

    The model is built on the meta device only to learn which matrices are prunable (one definition,
    `sau_trainer.core.prunable.prunable_parameters`); tensors are read one at a time.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from .core.prunable import prunable_parameters

    model_dir = Path(model_dir)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    files = _weight_files(model_dir)
    out = {}
    for name in prunable_parameters(skeleton):
        if name not in files:
            raise KeyError(f"{name} is not in the weights of {model_dir}")
        with safe_open(files[name], framework="pt") as f:
            t = f.get_tensor(name)
        out[name] = (int((t == 0).sum()), t.numel())
    return out


def weight_sparsity(model_dir: str | os.PathLike) -> tuple[float, dict[str, float]]:
    """(overall, per matrix) fraction of exact zeros of the prunable matrices in the saved weights."""
    counts = zero_counts(model_dir)
    total = sum(n for _, n in counts.values())
    return (sum(z for z, _ in counts.values()) / max(total, 1), {k: z / n for k, (z, n) in counts.items()})


# ----------------------------------------------------------------------------------------- the model card
def _recipe_dict(recipe: Any) -> dict | None:
    if recipe is None:
        return None
    if isinstance(recipe, dict):
        return recipe
    if isinstance(recipe, str | Path) and Path(recipe).is_file():
        from .pipeline.recipe_io import RecipeError, yaml_load

        try:  # bounded: a YAML alias bomb is refused, not expanded into the card
            doc = yaml_load(Path(recipe).read_text(), f"--recipe {recipe}")
        except (RecipeError, yaml.YAMLError) as err:
            raise ValueError(f"--recipe {recipe}: cannot be read ({' '.join(str(err).split())})") from None
        return doc if isinstance(doc, dict) else None
    if hasattr(recipe, "to_dict"):
        return recipe.to_dict()
    return None


# Hub datasets of the real benchmarks (the built-in ones are generated: none).
_CARD_DATASETS = {"tofu": ("locuslab/TOFU",), "wmdp": ("cais/wmdp", "hails/mmlu_no_train")}
_CARD_TITLES = {"tofu": "TOFU", "muse": "MUSE", "wmdp": "WMDP (with MMLU)",
                "synthetic": "the built-in synthetic TOFU-style benchmark",
                "synthetic-muse": "the built-in synthetic MUSE-style benchmark",
                "synthetic-wmdp": "the built-in synthetic WMDP-style benchmark"}


def card_benchmark(data_sec: dict, results: dict | None) -> dict[str, Any]:
    """What the model card says of the benchmark: its name, title, Hub datasets, tag, the split or subset, and
    the metrics shown (the benchmark's report columns; TOFU's with the longer labels of `CARD_METRICS`)."""
    from .benchmarks.registry import BENCHMARKS
    from .benchmarks.tofu.report import TOFU_REPORT

    settings = (results or {}).get("settings") or {}
    name = data_sec.get("benchmark") or settings.get("benchmark") or "synthetic"
    bench = BENCHMARKS.get(name)
    protocol = bench.protocol if bench is not None else "tofu"
    report = bench.report if bench is not None else TOFU_REPORT
    if protocol == "tofu":
        where = (results or {}).get("forget_split") or data_sec.get("forget_split") or settings.get("forget_split")
    else:
        where = data_sec.get("subset") or settings.get("subset") or (bench.default_subset if bench else None)
    datasets = _CARD_DATASETS.get(name, ())
    if name == "muse":
        from .benchmarks.muse.data import MUSE_HUB_IDS

        datasets = (MUSE_HUB_IDS.get(where or "news", MUSE_HUB_IDS["news"]),)
    if report is TOFU_REPORT:
        metrics = CARD_METRICS
    else:
        metrics = tuple((key, label[:1].upper() + label[1:]) for label, key in report.columns)
    return {"name": name, "protocol": protocol, "title": _CARD_TITLES.get(name, name), "where": where,
            "datasets": datasets, "tag": name if name in ("tofu", "muse", "wmdp") else None, "metrics": metrics}


def model_card(sparsity: dict, results: dict | None, recipe: dict | None, repo_id: str | None = None,
               run_name: str | None = None, roots: tuple[str, ...] | None = None) -> str:
    """README.md: YAML metadata (tags, base model, datasets, metrics, model-index) and a body with the
    recipe, the sparsity per layer and the results table.

    Nothing local reaches it: credentials are dropped and local absolute paths (``model.name_or_path``,
    ``data.data_dir``, ``prune.calibration_path``) shortened to their last part (`sau_trainer.redact`)."""
    base = ((recipe or {}).get("model") or {}).get("name_or_path")
    hub_base = isinstance(base, str) and not _looks_like_path(base)  # a Hub id, not a local directory
    sparsity, results, recipe = redact(sparsity, roots), redact(results, roots), redact(recipe, roots)
    summary = (results or {}).get("summary", {})
    unlearning = sparsity.get("unlearning") or {}
    method = sparsity.get("method")
    objective = unlearning.get("objective")
    sau = unlearning.get("sau")
    model_sec = (recipe or {}).get("model") or {}
    data_sec = (recipe or {}).get("data") or {}
    base = model_sec.get("name_or_path")
    bench = card_benchmark(data_sec, results)
    where = bench["where"]

    tags = ["sau-trainer", "machine-unlearning", "unlearning", "sparse", "pruned"]
    tags += [t for t in (method, objective, "sau" if sau else None, bench["tag"]) if t]
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    if base and hub_base:
        meta["base_model"] = base
    if bench["datasets"]:
        meta["datasets"] = list(bench["datasets"])
    metric_rows = [(k, label, summary[k]) for k, label in bench["metrics"] if summary.get(k) is not None]
    if metric_rows:
        meta["metrics"] = [k for k, _, _ in metric_rows]
        meta["model-index"] = [{
            "name": (repo_id or run_name or "model").split("/")[-1],
            "results": [{
                "task": {"type": "text-generation", "name": "Machine unlearning"},
                "dataset": {"type": bench["datasets"][0] if bench["datasets"] else f"sau-trainer/{bench['name']}",
                            "name": f"{bench['title']} {where or ''}".strip(),
                            **({"split": where} if where and bench["protocol"] == "tofu" else {}),
                            **({"config": where} if where and bench["protocol"] != "tofu" else {})},
                "metrics": [{"type": k, "name": label, "value": round(float(v), 6)} for k, label, v in metric_rows],
            }],
        }]

    measured = sparsity.get("measured_sparsity_weights", sparsity.get("measured_sparsity"))
    title = repo_id or run_name or "sau-trainer model"
    what = (f"A {measured:.1%} sparse" if measured is not None else "A sparse") + \
        (f" ({method}, {sparsity.get('structure', 'unstructured')})" if method else "") + \
        (f" `{base}`" if base else " model") + \
        (f" unlearned with {objective}{' + SAU (Sparsity-Aware Unlearning)' if sau else ' (plain masked baseline)'}"
         if objective else "")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {title}", "",
             what + f" on {bench['title']}{' (' + where + ')' if where else ''}, made with "
             "sau-trainer (run: `" + (run_name or "-") + "`).", "",
             "Pruned weights are stored as explicit zeros in ordinary safetensors; `sparsity.json` holds the "
             "pruning metadata and `sparsity_masks.safetensors` the bit-packed masks "
             "(`sau_trainer.SparsityMasks.load(path)`). Load it like any causal LM:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(REPO)", "tokenizer = AutoTokenizer.from_pretrained(REPO)",
             "```", ""]
    if metric_rows:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {v:.4g} |" for _, label, v in metric_rows]
        lines += ["", "Full per-example numbers in `results.json`.", ""]
    per_matrix = sparsity.get("per_matrix_sparsity") or {}
    if per_matrix:
        lines += ["## Sparsity per layer", "", f"Overall (measured in the weights): {measured:.4f}", "",
                  "| matrix | sparsity |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4f} |" for k, v in per_matrix.items()]
        lines += [""]
    if recipe:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the folder
def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _local_roots(model_dir: Path) -> tuple[str, ...]:
    """`sau_trainer.redact.local_roots` with the model's folder and, for a pipeline run, its output directory."""
    here = model_dir.resolve()
    extra = [here.parent] + [q for q in here.parents if (q / "stages").is_dir() and (q / "recipe.yaml").is_file()]
    return local_roots(*extra)


def _copy_for_upload(src: Path, dst: Path, roots: tuple[str, ...]) -> None:
    """A hard link (or copy) of `src`; a JSON file that names a local absolute path or holds a credential
    (``results.json``'s ``path`` and ``model.path``, a config's source directory) is written redacted instead."""
    if src.suffix == ".json":
        try:
            doc = json.loads(src.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            doc = None
        clean = redact(doc, roots)
        if doc is not None and clean != doc:
            dst.write_text(json.dumps(clean, indent=2) + "\n")
            return
    _link_or_copy(src, dst)


def prepare_push_folder(model_dir: str | os.PathLike, folder: str | os.PathLike, results: Any = None,
                        recipe: Any = None, run_name: str | None = None, repo_id: str | None = None) -> Path:
    """Assemble the upload folder: model + tokenizer + masks, ``sparsity.json`` measured from the weights,
    ``results.json`` and ``README.md``. Files are hard-linked where possible, never moved; JSON files are
    written redacted where they name a local absolute path or hold a credential (`sau_trainer.redact`)."""
    from .pruning import SPARSITY_FILE

    model_dir, folder = Path(model_dir), Path(folder)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model directory (no config.json).")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    roots = _local_roots(model_dir)
    for src in sorted(model_dir.iterdir()):
        if src.is_file() and src.name not in SKIP_FILES and src.name != SPARSITY_FILE:
            _copy_for_upload(src, folder / src.name, roots)
    sparsity: dict = {}
    if (model_dir / SPARSITY_FILE).is_file():
        sparsity = redact(json.loads((model_dir / SPARSITY_FILE).read_text()), roots)
    overall, per_matrix = weight_sparsity(model_dir)
    sparsity.update(per_matrix_sparsity=per_matrix, measured_sparsity_weights=overall)
    sparsity.setdefault("format", "sau-trainer/sparsity")
    (folder / SPARSITY_FILE).write_text(json.dumps(sparsity, indent=2) + "\n")
    results_doc = None
    if results is not None:
        path = Path(results)
        path = path / "results.json" if path.is_dir() else path
        if path.is_file():
            results_doc = json.loads(path.read_text())
            _copy_for_upload(path, folder / "results.json", roots)
        else:
            logger.warning("no results file at %s; the model card has no results table", path)
    (folder / "README.md").write_text(model_card(sparsity, results_doc, _recipe_dict(recipe), repo_id, run_name,
                                                 roots))
    return folder


def upload(folder: str | os.PathLike, repo_id: str, private: bool = True, commit_message: str | None = None,
           token: str | None = None) -> str:
    """Create the repository (if needed) and upload `folder`; `PushError` with the reason on any failure.

    A text file of the folder that holds an access token (``hf_...``; e.g. a folder prepared by an older version
    and uploaded as it is) stops the upload before anything is sent."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".md", ".txt", ".yaml", ".yml") and \
                path.stat().st_size < 64 * 2**20 and TOKEN_VALUE.search(path.read_text(errors="replace")):
            raise PushError(f"not pushed: {path} holds an access token (hf_...); nothing was uploaded. Prepare the "
                            f"folder again from the model (`sau-trainer push MODEL_DIR --repo-id {repo_id}`), which "
                            "leaves tokens out; the Hub reads HF_TOKEN or `huggingface-cli login` instead")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 commit_message=commit_message or "Upload with sau-trainer")
    except Exception as err:  # noqa: BLE001 - any failure: say so, keep the local files
        raise PushError(
            f"push to {repo_id!r} failed ({type(err).__name__}: {err}). Nothing local was changed: the upload "
            f"folder is {folder}. Log in (`hf auth login` or HF_TOKEN), check the network (and that "
            f"HF_HUB_OFFLINE is unset), then retry with `sau-trainer push {folder} --repo-id {repo_id}`."
        ) from err
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    logger.info("pushed %s to %s", folder, url)
    return str(url)


# ----------------------------------------------------------------------------------------- the subcommand
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``push`` subcommand."""
    parser.add_argument("dir", help="a saved model directory, a folder prepared for upload, or a `sau-trainer run` "
                                    "output directory (then --run picks the run)")
    parser.add_argument("--repo-id", required=True, help="target repository, e.g. user/llama-sau-npo")
    parser.add_argument("--run", default=None, help="run name in a pipeline output directory (default: the first "
                                                     "sparse SAU run of its report)")
    parser.add_argument("--results", default=None, help="results.json to include (default: found next to the model)")
    parser.add_argument("--recipe", default=None, help="recipe YAML to include in the card")
    parser.add_argument("--public", action="store_true", help="create the repository as public (default private)")
    parser.add_argument("--commit-message", default=None,
                        help="commit message of the upload (default: \"Upload with sau-trainer\")")
    parser.add_argument("--output-dir", "--output", dest="output_dir", default=None,
                        help="where to assemble the upload folder (default: a temporary directory)")
    parser.add_argument("--dry-run", action="store_true", help="assemble the folder, do not upload")


def is_prepared_folder(path: Path) -> bool:
    """A folder made by `prepare_push_folder` (e.g. left by a failed push): uploaded as it is."""
    return all((path / f).is_file() for f in ("config.json", "README.md", "sparsity.json"))


def resolve_source(path: Path, run: str | None) -> tuple[Path, Path | None, Path | None, str | None]:
    """(model dir, results, recipe, run name) for a model directory or a pipeline output directory."""
    if (path / "report.json").is_file() and (path / "stages").is_dir():
        report = json.loads((path / "report.json").read_text())
        sparse = [r["name"] for r in report["runs"] if r["model"] == "sparse"]
        if run is None:
            run = next((r["name"] for r in report["runs"] if r["model"] == "sparse" and r["sau"]),
                       sparse[0] if sparse else None)
        if run is None or not (path / "stages" / "models" / run).is_dir():
            raise FileNotFoundError(f"no run {run!r} in {path}; sparse runs: {', '.join(sparse) or 'none'}")
        if (path / "stages" / "models" / run / "weights_removed.json").is_file():  # pipeline.cleanup.MARKER
            raise FileNotFoundError(
                f"the weights of run {run!r} were removed after the run (report.keep_models); re-run it with them "
                f"kept: `sau-trainer run {path / 'recipe.yaml'} --output-dir {path} report.keep_models=all` "
                f"(recomputes every removed model), or push from the run itself (recomputes that one): push.push_to_hub=true "
                f"push.run={run} push.hub_model_id=USER/NAME")
        return (path / "stages" / "models" / run, path / "stages" / "eval" / run / "results.json",
                path / "recipe.yaml", run)
    results = path / "results.json"
    return path, results if results.is_file() else None, None, run


def main(args: argparse.Namespace) -> int:
    """Push; 2 on bad input, 1 when the upload fails (the local files stay as they were)."""
    from .pipeline.recipe_guards import repo_id_problem

    bad_repo = repo_id_problem(args.repo_id, "--repo-id")
    if bad_repo:  # before anything is prepared
        print(f"sau-trainer push: error: {bad_repo}", file=sys.stderr)
        return 2
    try:
        if is_prepared_folder(Path(args.dir)) and not (args.results or args.recipe or args.output_dir):
            folder = Path(args.dir)
            logger.info("%s is a prepared upload folder: uploading it as it is", folder)
            return _upload(args, folder)
        model_dir, results, recipe, run = resolve_source(Path(args.dir), args.run)
        results = Path(args.results) if args.results else results
        recipe = Path(args.recipe) if args.recipe else recipe
        if args.output_dir:
            folder = Path(args.output_dir)
        else:
            folder = Path(tempfile.mkdtemp(prefix="sau-push-")) / "upload"
        if folder.resolve() == model_dir.resolve():
            raise ValueError("--output-dir must not be the model directory itself")
        prepare_push_folder(model_dir, folder, results, recipe, run, args.repo_id)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"sau-trainer push: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"prepared {folder} (not uploaded)")
        return 0
    return _upload(args, folder)


def _upload(args: argparse.Namespace, folder: Path) -> int:
    if args.dry_run:
        print(f"{folder} is ready (not uploaded)")
        return 0
    try:
        url = upload(folder, args.repo_id, private=not args.public, commit_message=args.commit_message)
    except PushError as err:
        print(f"sau-trainer push: error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0
