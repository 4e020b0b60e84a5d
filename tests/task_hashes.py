"""The task hashes every shipped recipe plans, for the cache-compatibility test (tests/test_cache_compat.py).

An output directory stays valid only while the runner plans the same hash for every task: a restructuring must
change none. `planned_hashes` plans a recipe as ``sau-trainer run --dry-run`` does (`stages.plan`, `runner.task_hash`)
with the library versions pinned (a version bump changes every hash on purpose, and is not what this guards), and
with stand-in rows for benchmarks that are not generated (their data is not here offline; the stand-in fixes the
data's share of the hash, so the rest is what is compared). Besides the shipped recipes (recipes/study/ excluded:
the study's recipes change with the study), a few override sets of the demo recipe cover every objective and the
ways a recipe spells objective settings.

`write_output_fixture` keeps, beside them, an output directory written by the runner (stand-in stages: no model),
which the test re-plans: every task must be found finished.

Regenerate (only where a definition changed on purpose, with a CHANGELOG entry saying what is recomputed):
``python tests/task_hashes.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

from sau_testing import OneProcess

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "task_hashes.json"
PINNED = {"torch": "2.0.0", "transformers": "4.0.0", "sau_trainer": "0.0.0"}
_EVERY = "[graddiff,ga,npo,simnpo,rmu,pdu,wga,satimp,idkdpo,idknll,undial,ceu,altpo]"
# demo-recipe variants: each objective, its settings set flat (unlearn.<field>, unlearn.args.<field>), per
# objective (unlearn.objective_args.<objective>.<field>) and swept (a list: a grid axis)
VARIANTS = {
    "demo:every-objective": ["unlearn.objective=" + _EVERY, "unlearn.model=[dense]", "unlearn.seed=[0]",
                             "unlearn.learning_rate=[1e-4]", "unlearn.then_prune=false"],
    "demo:flat-objective-settings": [
        "unlearn.objective=" + _EVERY, "unlearn.model=[dense]", "unlearn.seed=[0]", "unlearn.learning_rate=[1e-4]",
        "unlearn.then_prune=false", "unlearn.npo_beta=0.2", "unlearn.simnpo_beta=3.0", "unlearn.simnpo_delta=0.5",
        "unlearn.rmu_layer=1", "unlearn.rmu_steering_coeff=4.0", "unlearn.rmu_mse_mean=open-unlearning",
        "unlearn.pdu_dual_lr=0.5", "unlearn.pdu_dual_update_upon=epoch", "unlearn.wga_beta=2.0",
        "unlearn.satimp_beta1=4.0", "unlearn.idk_pairing=fixed", "unlearn.idkdpo_beta=0.2", "unlearn.altpo_beta=0.5",
        "unlearn.alternate_source=perturbed", "unlearn.undial_beta=5.0", "unlearn.undial_label_mask=true",
        "unlearn.ceu_ignore_first_n=2", "unlearn.args.pdu_shifted_mask=true", "unlearn.args.satimp_beta2=2.0",
        "unlearn.saliency_loss=objective", "unlearn.pdu_epsilon=1.5", "unlearn.retain_kl_positions=answer"],
    "demo:per-objective-settings": [
        "unlearn.objective=[npo,undial,rmu,pdu]", "unlearn.model=[dense,sparse]", "unlearn.seed=[0]",
        "unlearn.learning_rate=[1e-4]",
        "unlearn.objective_args={npo: {npo_beta: 0.3, learning_rate: [2e-4]}, undial: {undial_beta: 3.0},"
        " rmu: {rmu_steering_coeff: 6.0, rmu_trainable_params: 'model\\.layers\\.1\\..*'},"
        " pdu: {pdu_epsilon: 2.0, pdu_primal_dual: false, pdu_dual_warmup_epochs: 2}}"],
    "demo:swept-objective-settings": [
        "unlearn.objective=[npo,wga]", "unlearn.model=[dense]", "unlearn.seed=[0]", "unlearn.learning_rate=[1e-4]",
        "unlearn.npo_beta=[0.05,0.1]", "unlearn.args.wga_beta=[0.5,1.0]", "unlearn.sau_topk=[0.2,0.3]"],
}


def recipe_cases() -> dict[str, tuple[Path, list[str]]]:
    """name -> (recipe file, overrides): every shipped recipe but the study's, and the demo variants."""
    cases = {str(p.relative_to(ROOT)): (p, []) for p in sorted((ROOT / "recipes").rglob("*.yaml"))
             if "study" not in p.relative_to(ROOT / "recipes").parts[:1] and "accelerate" not in p.parts}
    cases.update({name: (ROOT / "recipes" / "demo.yaml", overrides) for name, overrides in VARIANTS.items()})
    return cases


def _stand_in_rows() -> dict[str, list[dict]]:
    return {"stand-in": [{"question": "q", "answer": "a"}]}


def pinned_task_hash(task, dep_hashes: dict[str, str]) -> str:
    """`runner.task_hash` with the library versions pinned (its document, the versions replaced)."""
    import hashlib

    from sau_trainer.pipeline.runner import PIPELINE_VERSION

    doc = {"kind": task.kind, "settings": task.settings, "deps": {k: dep_hashes[v] for k, v in task.deps.items()},
           "pipeline_version": PIPELINE_VERSION, **PINNED}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def planned_hashes(path: Path, overrides: list[str]) -> dict[str, str]:
    """task name -> hash, as the runner plans them (library versions pinned, stand-in rows for external data)."""
    from sau_trainer.pipeline import runner
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import plan

    recipe = load_recipe(path, overrides)
    tasks = plan(recipe, _stand_in_rows)
    with mock.patch.object(runner, "task_hash", pinned_task_hash):
        runner.hash_tasks(tasks)
    return {t.name: t.hash for t in tasks}


COMPAT_DIR = ROOT / "tests" / "data" / "cache_compat"  # recipe.yaml and the output directory it wrote (output/)


def run_stand_in(recipe_path: Path, out: Path) -> list[str]:
    """`run_recipe` of the recipe into `out` with every stage replaced by one that writes nothing (no model is
    made: what is compared is which tasks run), library versions pinned; the names of the tasks that ran."""
    from sau_trainer.pipeline import STAGES, run_recipe, runner
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import Stage

    ran: list[str] = []

    def stand_in(ctx, task, folder):
        ran.append(task.name)
        return {}

    stages = {kind: Stage(stand_in, s.distributed, s.cached, s.help) for kind, s in STAGES.items()}
    with mock.patch.dict(STAGES, stages), mock.patch.object(runner, "task_hash", pinned_task_hash):
        run_recipe(load_recipe(recipe_path), out, state=OneProcess())
    return ran


def write_output_fixture() -> None:
    """tests/data/cache_compat/output: the stages the stand-in run of cache_compat/recipe.yaml finishes (their
    stage.json: hash, settings, checksums), as this tree's runner writes them."""
    import shutil

    out = COMPAT_DIR / "output"
    shutil.rmtree(out, ignore_errors=True)
    run_stand_in(COMPAT_DIR / "recipe.yaml", out)
    shutil.rmtree(out / ".sau-trainer", ignore_errors=True)  # execution counters, locks: not needed to reuse
    shutil.rmtree(out / "stages" / "report", ignore_errors=True)  # the report is rewritten by every run


def snapshot() -> dict[str, dict[str, str]]:
    return {name: planned_hashes(path, overrides) for name, (path, overrides) in recipe_cases().items()}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the package from this tree
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    write_output_fixture()
    print(f"wrote {SNAPSHOT.relative_to(ROOT)} and {COMPAT_DIR.relative_to(ROOT)}/output", file=sys.stderr)
