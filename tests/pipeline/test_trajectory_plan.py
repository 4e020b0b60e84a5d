"""`unlearn.eval_steps` in the plan (`pipeline.trajectories`): off by default with every unlearn task unchanged; on,
each grid run's task carries the evaluation's settings and depends on the retain model's evaluation, planned
first; the evaluation's rows; the recipe checks."""

import pytest

from sau_trainer.pipeline import validate
from sau_trainer.pipeline.schema import RecipeError
from sau_trainer.pipeline.stages import plan
from sau_trainer.pipeline.trajectories import cut_benchmark, trajectory_note

BASE = {"name": "t", "model": {"shape": "tiny"}, "prune": {"method": ["magnitude"], "num_samples": 4},
        "unlearn": {"objective": ["npo"], "learning_rate": [1e-4, 1e-3], "seed": [0, 1]},
        "evaluate": {"max_new_tokens": 24}}


def recipe(**unlearn):
    return validate({**BASE, "unlearn": {**BASE["unlearn"], **unlearn}})


def test_off_by_default_no_unlearn_task_changes():
    tasks = plan(recipe())
    unlearn = [t for t in tasks if t.kind == "unlearn"]
    assert len(unlearn) == 2 * 2 * 2 * 2  # dense + magnitude, plain + SAU, 2 rates, 2 seeds
    for t in unlearn:
        assert "trajectory" not in t.settings and "retain_eval" not in t.deps
        assert not {"eval_steps", "eval_max_new_tokens", "eval_rows"} & set(t.settings["unlearn"])
    assert trajectory_note(recipe()) is None


def test_on_every_grid_run_evaluates_during_unlearning_after_the_retain_models_evaluation():
    tasks = plan(recipe(eval_steps=3, eval_rows=8))
    names = [t.name for t in tasks]
    unlearn = [t for t in tasks if t.kind == "unlearn"]
    assert names.index("eval/retain") < min(names.index(t.name) for t in unlearn)
    for t in unlearn:
        traj = t.settings["trajectory"]
        assert traj["eval_steps"] == 3 and isinstance(traj["eval_steps"], int)  # an int stays optimizer steps
        assert traj["rows"] == 8 and traj["max_new_tokens"] == 24  # evaluate.max_new_tokens by default
        assert traj["evaluate"]["max_new_tokens"] == 24 and t.deps["retain_eval"] == "eval/retain"
        assert traj["membership_inference"] is False  # off by default: a cheaper evaluation, said in the note
    fraction = plan(recipe(eval_steps=0.2, eval_max_new_tokens=8))
    traj = next(t for t in fraction if t.kind == "unlearn").settings["trajectory"]
    assert traj["eval_steps"] == 0.2 and traj["max_new_tokens"] == 8 and traj["rows"] is None
    note = trajectory_note(recipe(eval_steps=0.2, eval_rows=8))
    assert "every 0.2 of each run's steps" in note and "the first 8 rows of each split" in note
    assert "without the membership-inference attacks" in note
    with_mia = plan(recipe(eval_steps=3, eval_membership_inference=True))
    traj_mia = next(t for t in with_mia if t.kind == "unlearn").settings["trajectory"]
    assert traj_mia["membership_inference"] is True and traj_mia != traj  # its own task hash
    assert "membership" not in trajectory_note(recipe(eval_steps=3, eval_membership_inference=True))


@pytest.mark.parametrize("unlearn,message", [
    ({"eval_steps": 1.5}, "unlearn.eval_steps: give an integer >= 1"),
    ({"eval_steps": 0}, "unlearn.eval_steps: give an integer >= 1"),
    ({"eval_steps": 2, "eval_max_new_tokens": 0}, "generate no answers"),
    ({"eval_rows": 0}, "unlearn.eval_rows: must be >= 1"),
])
def test_bad_settings_are_refused_in_one_line(unlearn, message):
    with pytest.raises(RecipeError, match=message):
        recipe(**unlearn)


def test_the_evaluation_cuts_every_split_but_the_forget_sets_and_the_holdout():
    data = {"forget10": list(range(20)), "forget10_perturbed": list(range(20)), "holdout10": list(range(20)),
            "retain_perturbed": list(range(20)), "real_authors_perturbed": list(range(20))}
    cut = cut_benchmark(data, "forget10", 5)
    assert {k: len(v) for k, v in cut.items()} == {"forget10": 20, "forget10_perturbed": 20, "holdout10": 20,
                                                   "retain_perturbed": 5, "real_authors_perturbed": 5}
    assert cut_benchmark(data, "forget10", None) is data


class _Bench:
    """A benchmark of one protocol that records what its evaluation is asked."""

    def __init__(self, protocol):
        self.protocol, self.calls = protocol, []

    def data_options(self, data):
        return {}

    def evaluate(self, model, tokenizer, data, **kw):
        self.calls.append(kw)
        return {"summary": {"model_utility": 0.5}}


@pytest.mark.parametrize("protocol,mia,passed", [("tofu", False, False), ("tofu", True, None),
                                                 ("muse", False, None)])
def test_the_evaluations_leave_out_the_membership_attacks_only_where_asked_and_possible(protocol, mia, passed):
    """TOFU's evaluation is asked to skip the attacks (off by default); asked for them, or on MUSE (privleak is one
    of its metrics), the evaluation runs as the evaluate stage's; the report's note says the same."""
    from types import SimpleNamespace

    from sau_trainer.pipeline.trajectories import evaluation_callback, skips_membership_inference

    r = recipe(eval_steps=3, eval_membership_inference=mia)
    task = next(t for t in plan(r) if t.kind == "unlearn")
    bench = _Bench(protocol)
    ctx = SimpleNamespace(recipe=r, benchmark={"forget10": [1]}, bench=bench, task_dir=lambda name: None)
    callback = evaluation_callback(ctx, task, tokenizer=None)
    callback.evaluate(model=None)
    assert bench.calls[0].get("membership_inference") is passed
    assert skips_membership_inference(bench, mia) is (passed is False)
