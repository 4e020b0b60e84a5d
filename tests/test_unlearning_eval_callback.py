"""`UnlearningEvaluationCallback`: evaluations at the right optimizer steps (gradient accumulation included), logged
through the Trainer, training unchanged by evaluating, the best evaluation's weights loaded with sparsity exact,
and a resumed run's trajectory and best model equal to the uninterrupted run's."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from sau_trainer import SparsityMasks, UnlearningEvaluationCallback, prunable_parameters, sparsity_preserving
from sau_trainer.data.qa import QACollator, RowsDataset, tokenize_rows
from sau_trainer.unlearning_eval import STATE_KEY


def forget_nll(tokenizer, rows):
    """A real evaluation: the mean answer NLL of `rows` (and its negation as a stand-in utility)."""
    batch = QACollator(tokenizer)(tokenize_rows(rows, tokenizer, 64, name="eval rows"))

    def evaluate(model):
        loss = float(model(**{k: v.to(model.device) for k, v in batch.items()}).loss)
        return {"forget_nll": loss, "model_utility": -loss}

    return evaluate


class StepProbe(TrainerCallback):
    """Counts optimizer steps on its own and records whether the model trains at each step's start."""

    def __init__(self):
        self.optimizer_steps, self.training_at_step_begin, self.evaluated = 0, [], []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_steps += 1

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.training_at_step_begin.append(model.training)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluated.append((state.global_step, dict(metrics)))


class WeightRecorder(TrainerCallback):
    """The model's weights at train start (step 0) and after every optimizer step."""

    def __init__(self):
        self.weights = {}

    def _take(self, state, model):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._take(state, model)


def _rows(tiny_splits):
    return qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8)


def test_exported_from_the_package():
    import sau_trainer

    assert "UnlearningEvaluationCallback" in sau_trainer.__all__
    assert issubclass(sau_trainer.UnlearningEvaluationCallback, TrainerCallback)


def test_evaluates_at_optimizer_steps_under_accumulation_and_logs_through_the_trainer(tokenizer, tiny_splits,
                                                                                      tmp_path):
    forget, retain = _rows(tiny_splits)
    probe = StepProbe()
    real = forget_nll(tokenizer, forget)
    seen = []

    def evaluate(model):
        seen.append((trainer.state.global_step, probe.optimizer_steps, model.training, torch.is_grad_enabled()))
        return real(model)

    cb = UnlearningEvaluationCallback(evaluate, eval_steps=2)
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, forget, retain, tmp_path, max_steps=5,
                           per_device_train_batch_size=2, gradient_accumulation_steps=2, callbacks=[probe, cb])
    trainer.train()
    # steps are optimizer steps (10 micro-batches): before training, every 2nd step, and the last
    assert [s for s, *_ in seen] == [0, 2, 4, 5]
    assert all(global_step == optimizer_steps for global_step, optimizer_steps, _, _ in seen)
    assert not any(training or grad for *_, training, grad in seen)  # eval mode, no_grad
    assert all(probe.training_at_step_begin) and len(probe.training_at_step_begin) == 5  # back in train mode
    assert [e["step"] for e in cb.trajectory] == [0, 2, 4, 5]
    assert set(cb.trajectory[0]) == {"step", "forget_nll", "model_utility"}
    logged = [e for e in trainer.state.log_history if "eval_forget_nll" in e]
    assert [e["step"] for e in logged] == [0, 2, 4, 5]
    assert [e["eval_forget_nll"] for e in logged] == [e["forget_nll"] for e in cb.trajectory]
    assert all("eval_runtime" in e for e in logged)
    assert [s for s, _ in probe.evaluated] == [0, 2, 4, 5]  # every callback's on_evaluate fired
    assert trainer.state.stateful_callbacks[STATE_KEY]["trajectory"] == cb.trajectory
    assert cb.trajectory[-1]["forget_nll"] > cb.trajectory[0]["forget_nll"]  # it did unlearn


def test_fractional_eval_steps(tokenizer, tiny_splits, tmp_path):
    forget, retain = _rows(tiny_splits)
    cb = UnlearningEvaluationCallback(forget_nll(tokenizer, forget), eval_steps=0.25)  # ceil(0.25 * 6) = 2
    make_trainer(sparse_model(tokenizer), tokenizer, forget, retain, tmp_path, max_steps=6, callbacks=[cb]).train()
    assert [e["step"] for e in cb.trajectory] == [0, 2, 4, 6]


def test_training_is_unchanged_by_evaluating(tokenizer, tiny_splits, tmp_path):
    """Attention dropout makes training draw random numbers; the evaluation draws some too (and runs forwards)."""
    forget, retain = _rows(tiny_splits)
    real = forget_nll(tokenizer, forget)

    def noisy(model):
        torch.rand(7), random.random(), np.random.rand(3)
        return real(model)

    def run(out, callbacks):
        model = sparse_model(tokenizer, attention_dropout=0.3)
        trainer = make_trainer(model, tokenizer, forget, retain, out, max_steps=5, callbacks=callbacks)
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], model.state_dict()

    losses, weights = run(tmp_path / "a", None)
    losses_cb, weights_cb = run(tmp_path / "b", [UnlearningEvaluationCallback(noisy, eval_steps=1)])
    assert len(losses) == 5 and losses_cb == losses
    assert all(torch.equal(weights[k], weights_cb[k]) for k in weights)


# utility at steps 0..6 (start 1.0, floor 0.9 x start = 0.9) and the forget metrics
UTILITY = [1.0, 0.95, 0.92, 0.91, 0.85, 0.80, 0.70]
FQ = [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99]
ROUGE = [0.9, 0.6, 0.4, 0.45, 0.3, 0.2, 0.1]


def scripted(trainer_ref):
    def evaluate(model):
        step = trainer_ref[0].state.global_step
        return {"summary": {"model_utility": UTILITY[step], "forget_quality": FQ[step], "forget_rouge": ROUGE[step],
                            "privleak": None}}

    return evaluate


@pytest.mark.parametrize(("criterion", "expected"), [
    (dict(best="forget_quality", utility_fraction=0.9), 3),  # the best FQ with utility >= 0.9
    (dict(best="forget_quality", utility_floor=0.84), 4),  # an absolute floor
    (dict(best="forget_rouge", mode="min", utility_fraction=0.9), 2),  # lower is better; 0.4 at step 2
    (dict(best="forget_quality"), 6),  # no floor: the last (best) step, nothing to load
])
def test_best_model_is_loaded_and_sparsity_stays_exact(criterion, expected, tokenizer, tiny_splits, tmp_path):
    forget, retain = _rows(tiny_splits)
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    ref, recorder = [None], WeightRecorder()
    cb = UnlearningEvaluationCallback(scripted(ref), eval_steps=1, **criterion)
    trainer = ref[0] = make_trainer(model, tokenizer, forget, retain, tmp_path, max_steps=6, callbacks=[recorder])
    cb.attach(trainer)
    trainer.train()
    assert cb.best["step"] == expected and cb.best["loaded"]
    assert len(cb.trajectory) == 7 and "privleak" not in cb.trajectory[0]
    final = model.state_dict()
    assert all(torch.equal(final[k], recorder.weights[expected][k]) for k in final)
    if expected != 6:
        assert not all(torch.equal(final[k], recorder.weights[6][k]) for k in final)
    assert masks.count_nonzero_pruned(model) == 0
    assert trainer.state.stateful_callbacks[STATE_KEY]["best"]["step"] == expected


def test_no_evaluation_above_the_floor_keeps_the_final_weights(tokenizer, tiny_splits, tmp_path, caplog):
    forget, retain = _rows(tiny_splits)
    model = sparse_model(tokenizer)
    ref, recorder = [None], WeightRecorder()
    cb = UnlearningEvaluationCallback(scripted(ref), eval_steps=2, best="forget_quality", utility_floor=1.5)
    trainer = ref[0] = make_trainer(model, tokenizer, forget, retain, tmp_path, max_steps=4,
                                    callbacks=[recorder, cb])
    with caplog.at_level(logging.WARNING, logger="sau_trainer.unlearning_eval"):
        trainer.train()
    assert cb.best is None and "No evaluation had model_utility >= the floor 1.5" in caplog.text
    assert all(torch.equal(v, recorder.weights[4][k]) for k, v in model.state_dict().items())


def test_a_start_utility_of_zero_is_reported(tokenizer, tiny_splits, tmp_path, caplog):
    forget, retain = _rows(tiny_splits)
    cb = UnlearningEvaluationCallback(lambda m: {"forget_quality": 0.5, "model_utility": 0.0}, eval_steps=1,
                                      best="forget_quality", utility_fraction=0.9)
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, forget, retain, tmp_path, max_steps=1, callbacks=[cb])
    with caplog.at_level(logging.WARNING, logger="sau_trainer.unlearning_eval"):
        trainer.train()
    assert "model_utility is 0.0, so utility_fraction=0.9 makes no floor" in caplog.text


def test_resume_gives_the_uninterrupted_trajectory_and_best_model(tokenizer, tiny_splits, tmp_path):
    forget, retain = _rows(tiny_splits)
    base = sparse_model(tokenizer).state_dict()
    utility = {0: 1.0, 2: 0.95, 4: 0.5, 6: 0.4}  # the best under the floor is step 2, before the checkpoint at 4

    def make(calls):
        ref = [None]
        real = forget_nll(tokenizer, forget)

        def evaluate(model):
            step = ref[0].state.global_step
            calls.append(step)
            return {**real(model), "model_utility": utility[step], "forget_quality": step / 10}

        cb = UnlearningEvaluationCallback(evaluate, eval_steps=2, best="forget_quality", utility_fraction=0.9)
        ref[0] = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, forget, retain, tmp_path / "run",
                              max_steps=6, save_strategy="steps", save_steps=2, callbacks=[cb])
        return ref[0], cb

    calls_a, calls_b = [], []
    first, cb_a = make(calls_a)
    first.train()
    saved = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in saved["stateful_callbacks"][STATE_KEY]["trajectory"]] == [0, 2, 4]
    assert (tmp_path / "run" / "checkpoint-4" / "unlearning_best.pt").is_file()  # best (2) is not checkpoint 4
    assert not (tmp_path / "run" / "checkpoint-2" / "unlearning_best.pt").exists()  # the checkpoint is the best
    second, cb_b = make(calls_b)
    second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert calls_a == [0, 2, 4, 6] and calls_b == [6]
    assert [e["step"] for e in cb_b.trajectory] == [0, 2, 4, 6]
    for a, b in zip(cb_a.trajectory, cb_b.trajectory, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6)
    assert cb_a.best["step"] == cb_b.best["step"] == 2 and cb_b.best["loaded"]
    wa, wb = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_works_with_any_trainer_wrapped_by_sparsity_preserving(tokenizer, tiny_splits, tmp_path):
    forget, _ = _rows(tiny_splits)
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-3, optim="sgd", save_strategy="no", disable_tqdm=True, use_cpu=True,
                             logging_steps=1, seed=0)
    recorder = WeightRecorder()
    trainer = sparsity_preserving(Trainer)(model=model, args=args, callbacks=[recorder],
                                           train_dataset=RowsDataset(tokenize_rows(forget, tokenizer, 64)),
                                           data_collator=QACollator(tokenizer))
    real = forget_nll(tokenizer, forget)
    cb = UnlearningEvaluationCallback(lambda m: {**real(m), "score": -abs(trainer.state.global_step - 2)},
                                      eval_steps=1, best="score")
    trainer.add_callback(cb)  # found when training starts
    trainer.train()
    assert [e["step"] for e in cb.trajectory] == [0, 1, 2, 3, 4] and cb.best["step"] == 2
    assert all(torch.equal(v, recorder.weights[2][k]) for k, v in model.state_dict().items())
    assert masks.count_nonzero_pruned(model) == 0
    moved = prunable_parameters(model)
    assert any(not torch.equal(moved[n], prunable_parameters(sparse_model(tokenizer))[n]) for n in moved)


def test_with_evaluate_tofu(tokenizer, tiny_splits, memorized, tmp_path):
    from sau_trainer import evaluate_tofu

    model = memorized.load_model()
    bench = memorized.benchmark
    reference = evaluate_tofu(model, memorized.tokenizer, bench, "forget10", max_new_tokens=0,
                              membership_inference=False, show_progress=False)
    cb = UnlearningEvaluationCallback(
        lambda m: evaluate_tofu(m, memorized.tokenizer, bench, "forget10", batch_size=64, max_new_tokens=24,
                                retain_results=reference, membership_inference=False, show_progress=False),
        eval_steps=2, best="forget_quality", utility_fraction=0.9)
    trainer = make_trainer(model, memorized.tokenizer, qa(bench, "forget10", 8), qa(bench, "retain90", 8), tmp_path,
                           max_steps=2, sau=False, callbacks=[cb])
    trainer.train()
    assert [e["step"] for e in cb.trajectory] == [0, 2]
    assert cb.trajectory[0]["forget_quality"] == pytest.approx(1.0)  # the reference is the starting model
    assert {"model_utility", "forget_truth_ratio", "forget_probability"} <= set(cb.trajectory[0])
    assert cb.trajectory[0]["model_utility"] > 0.5 and cb.best["floor"] > 0.45  # generation gives ROUGE: a real floor
    assert any("eval_model_utility" in e for e in trainer.state.log_history)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(eval_steps=0), "eval_steps must be an int >= 1"),
    (dict(eval_steps=1.5), "eval_steps must be an int >= 1"),
    (dict(eval_steps=1, mode="up"), "mode must be one of"),
    (dict(eval_steps=1, best="fq", utility_floor=0.5, utility_fraction=0.9), "not both"),
    (dict(eval_steps=1, utility_fraction=0.9), "set best="),
    (dict(eval_steps=1, best="fq", utility_floor=float("nan")), "finite number"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnlearningEvaluationCallback(lambda m: {}, **kwargs)


def test_a_missing_metric_stops_before_the_first_step(tokenizer, tiny_splits, tmp_path):
    forget, retain = _rows(tiny_splits)
    probe = StepProbe()
    cb = UnlearningEvaluationCallback(lambda m: {"summary": {"forget_quality": None, "model_utility": 1.0}},
                                      eval_steps=1, best="forget_quality")
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, forget, retain, tmp_path, callbacks=[probe, cb])
    with pytest.raises(ValueError, match="no numeric 'forget_quality'.*retain_results"):
        trainer.train()
    assert probe.optimizer_steps == 0


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["ddp", "fsdp2"])
def test_two_processes_agree_without_deadlock(launcher, tmp_path):
    """Every rank evaluates; rank 0's metrics are what every rank records (its `rank_marker` is 0), every rank
    picks the same best step and loads its weights (its own shards under FSDP2), and pruned entries stay zero."""
    from launch import TESTS, accelerate_launch, torchrun

    worker = TESTS / "unlearning_eval_worker.py"
    if launcher == "ddp":
        torchrun(worker, tmp_path, timeout=600)
    else:
        accelerate_launch("fsdp2_cpu.yaml", worker, tmp_path, timeout=600)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert all(r["sharded"] == (launcher == "fsdp2") for r in reports)
    assert reports[0]["trajectory"] == reports[1]["trajectory"]
    assert [e["step"] for e in reports[0]["trajectory"]] == [0, 1, 2, 3, 4]
    assert all(e["rank_marker"] == 0.0 for e in reports[1]["trajectory"])  # rank 0's numbers, broadcast
    assert reports[0]["best"] == reports[1]["best"] and reports[0]["best"]["step"] == 2
    assert all(r["best_loaded"] and r["final_differs_from_last"] for r in reports)
    if launcher == "ddp":
        assert reports[0]["weights_hash"] == reports[1]["weights_hash"]
    assert reports[0]["pruned_nonzero"] == 0
