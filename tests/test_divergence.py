"""Divergence: a non-finite loss or gradient norm never reaches the weights, and pruned entries stay exactly zero.

At a learning rate of 1e4 a tiny sparse Llama diverges within a few steps (GA and NPO, AdamW and SGD, SAU in grad
and update mode, plain masking). Training must stop before the step that would apply a NaN gradient, with
`TrainingDiverged` naming the step, the learning rate and the last finite loss; with ``skip_nonfinite_steps`` such
steps are skipped instead. Either way the weights stay finite and every pruned entry stays exactly 0.
"""

import logging
import math

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

import sau_trainer
from sau_trainer import TrainingDiverged
from sau_trainer.divergence import DivergenceGuard
from sau_trainer.fused import pack_planes, where_
from sau_trainer.masks import prunable_parameters


def _masks(model):
    return {n: p.detach() != 0 for n, p in prunable_parameters(model).items()}


def _assert_sparse_and_finite(model, masks):
    params = prunable_parameters(model)
    moved = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items())
    assert moved == 0, f"{moved} pruned entries are not exactly zero"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite weights in {bad[:3]}"


CASES = [
    pytest.param("ga", "adamw_torch", "grad", True, id="ga-adamw-grad"),
    pytest.param("ga", "sgd", "update", True, id="ga-sgd-update"),
    pytest.param("npo", "adamw_torch", "update", True, id="npo-adamw-update"),
    pytest.param("npo", "sgd", "grad", True, id="npo-sgd-grad"),
    pytest.param("ga", "sgd", "grad", False, id="ga-sgd-plain"),
    pytest.param("npo", "adamw_torch", "grad", False, id="npo-adamw-plain"),
]


def _trainer(tokenizer, tiny_splits, tmp_path, objective, optim, target, sau, **kw):
    model = sparse_model(tokenizer)
    masks = _masks(model)
    kw = dict(dict(max_steps=10, learning_rate=1e4), **kw)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8),
                           tmp_path, objective=objective, optim=optim, sau=sau, sau_redistribution_target=target, **kw)
    return trainer, model, masks


@pytest.mark.parametrize("objective, optim, target, sau", CASES)
def test_divergence_stops_before_the_step_with_a_message(tokenizer, tiny_splits, tmp_path, objective, optim,
                                                           target, sau):
    trainer, model, masks = _trainer(tokenizer, tiny_splits, tmp_path, objective, optim, target, sau)
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.step == trainer.state.global_step + 1  # the refused step was not counted as taken
    assert not math.isfinite(err.loss) and err.learning_rate == 1e4
    assert err.last_finite_loss is not None and math.isfinite(err.last_finite_loss)
    message = str(err)
    assert f"step {err.step}" in message and "learning_rate (now 10000)" in message
    assert f"last finite loss: {err.last_finite_loss:.6g}" in message and "skip_nonfinite_steps" in message
    _assert_sparse_and_finite(model, masks)


@pytest.mark.parametrize("target", ["grad", "update"])
@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_skip_nonfinite_steps_with_accumulation(tokenizer, tiny_splits, tmp_path, caplog, optim, target):
    trainer, model, masks = _trainer(tokenizer, tiny_splits, tmp_path, "ga", optim, target, True, max_steps=6,
                                     gradient_accumulation_steps=2, per_device_train_batch_size=2,
                                     skip_nonfinite_steps=True)
    with caplog.at_level(logging.WARNING, logger="sau_trainer.divergence"):
        trainer.train()
    assert trainer.state.global_step == 6
    skipped = trainer._divergence.skipped
    assert skipped >= 1
    warnings = [r.getMessage() for r in caplog.records if "Skipped optimizer step" in r.getMessage()]
    assert len(warnings) == skipped and f"{skipped} step(s) skipped so far" in warnings[-1]
    _assert_sparse_and_finite(model, masks)
    # the precision probe does not count skipped steps as steps that failed to change the weights
    assert not any("updates are not reaching the weights" in r.getMessage() for r in caplog.records)


def test_without_clipping_the_norm_is_still_checked(tokenizer, tiny_splits, tmp_path):
    """max_grad_norm=0: no clipping, the gradient norm is still computed and checked once per step."""
    trainer, model, masks = _trainer(tokenizer, tiny_splits, tmp_path, "ga", "adamw_torch", "grad", True,
                                     max_grad_norm=0.0)
    with pytest.raises(TrainingDiverged):
        trainer.train()
    _assert_sparse_and_finite(model, masks)


def test_guard_checks_the_local_norm_when_the_trainer_gives_none():
    """Trainers that do not report the norm (transformers < 5 without clipping): the guard computes it."""
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    guard = DivergenceGuard()
    guard.add_loss(torch.tensor(2.5))
    with pytest.raises(TrainingDiverged, match="the gradient norm is nan") as info:
        guard.check(7, 0.1, [p])
    assert info.value.last_finite_loss == 2.5 and info.value.step == 7
    skipping = DivergenceGuard(skip=True)
    skipping.add_loss(torch.tensor(float("inf")))
    assert skipping.check(3, 0.1, [p]) is False and p.grad is None and skipping.skipped == 1
    p.grad = torch.ones(4)
    skipping.add_loss(torch.tensor(1.0))
    assert skipping.check(4, 0.1, [p]) is True and p.grad is not None


def test_eager_where_writes_exact_zeros_whatever_the_tensor_and_w_hold(monkeypatch):
    monkeypatch.setenv("SAU_TRAINER_KERNELS", "eager")
    keep = torch.tensor([[True, False, True, False]] * 8)
    t = torch.full((8, 4), float("nan"))
    w = torch.full((8, 1), float("inf"))
    where_(t, pack_planes(keep), w)
    assert torch.equal(t[~keep], torch.zeros(int((~keep).sum())))
    assert not torch.signbit(t[~keep]).any()  # +0.0, not -0.0


def test_exported_and_picklable():
    import pickle

    assert sau_trainer.TrainingDiverged is TrainingDiverged and "TrainingDiverged" in sau_trainer.__all__
    err = pickle.loads(pickle.dumps(TrainingDiverged(3, float("nan"), 1.5, 1e-4)))
    assert (err.step, err.last_finite_loss, err.learning_rate) == (3, 1.5, 1e-4) and str(err).startswith("Training")


def _sharded_run(tmp_path, config, *opts, env=None):
    """tests/sharded_worker.py on 2 CPU processes at lr 1e4 (uneven shards, 2 micro-batches per step)."""
    import json

    from test_sharded import launch

    out = tmp_path / config.split(".")[0]
    launch(config, out, "lr=1e4", "steps=8", "ga=2", "odd=1", *opts, env=env)
    ranks = [json.loads((out / f"diverged-{r}.json").read_text()) for r in (0, 1)]
    return ranks, json.loads((out / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["fsdp2_cpu.yaml", "cpu_two_processes.yaml"], ids=["fsdp2", "ddp"])
def test_ranks_stop_together_or_skip_together(tmp_path, config):
    ranks, report = _sharded_run(tmp_path / "raise", config)
    assert report["world"] == 2 and report["sharded"] == (config == "fsdp2_cpu.yaml")
    assert ranks[0] is not None and ranks[0] == ranks[1]  # the same step, value and message fields on both ranks
    assert ranks[0]["step"] == ranks[0]["global_step"] + 1 and ranks[0]["learning_rate"] == 1e4
    assert report["pruned_nonzero"] == 0 and report["nonfinite"] == 0
    ranks, report = _sharded_run(tmp_path / "skip", config, "skip=1", "optim=sgd")
    assert ranks == [None, None] and report["skipped"] >= 1
    assert report["pruned_nonzero"] == 0 and report["nonfinite"] == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_ranks_stop_together(tmp_path):
    pytest.importorskip("deepspeed")
    from launch import worker_env

    ranks, report = _sharded_run(tmp_path, "zero3_cpu.yaml", env=worker_env(DS_ACCELERATOR="cpu"))
    assert report["distributed_type"] == "DistributedType.DEEPSPEED"
    assert ranks[0] is not None and ranks[0] == ranks[1]
    assert report["pruned_nonzero"] == 0 and report["nonfinite"] == 0


def test_one_host_read_per_optimizer_step_none_per_micro_batch(tokenizer, tiny_splits, tmp_path, monkeypatch):
    from test_fused import SyncCounter

    trainer, _, _ = _trainer(tokenizer, tiny_splits, tmp_path, "ga", "adamw_torch", "grad", True, max_steps=3,
                             learning_rate=1e-3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    calls = {"add_loss": [], "check": []}
    for name in calls:
        inner = getattr(DivergenceGuard, name)

        def counted(self, *a, _inner=inner, _name=name, **k):
            with SyncCounter() as counter:
                out = _inner(self, *a, **k)
            calls[_name].append(counter.calls)
            return out

        monkeypatch.setattr(DivergenceGuard, name, counted)
    trainer.train()
    assert len(calls["add_loss"]) == 6 and all(c == [] for c in calls["add_loss"])
    assert calls["check"] == [["tolist"]] * 3


def test_any_trainer_through_sparsity_preserving_stops_too(tokenizer, tiny_splits, tmp_path):
    """The check is part of the one masking mechanism: trl's SFTTrainer wrapped by `sparsity_preserving`. Descent
    does not diverge on its own here, so from the third step on the final norm's output is made NaN (a forward
    hook: the weights themselves stay as they were)."""
    from transformers import TrainerCallback

    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    model = sparse_model(tokenizer)
    masks = _masks(model)
    poisoned = []
    model.model.norm.register_forward_hook(lambda m, i, out: out * float("nan") if poisoned else out)

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                poisoned.append(True)

    rows = qa(tiny_splits, "forget10", 8)
    data = datasets.Dataset.from_list([{"prompt": r["question"], "completion": " " + r["answer"]} for r in rows])
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], max_steps=4, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, learning_rate=1e-3, optim="sgd", save_strategy="no",
                         disable_tqdm=True, use_cpu=True, seed=0, max_length=64, max_grad_norm=0.0)
    trainer = sau_trainer.sparsity_preserving(trl.SFTTrainer)(model=model, args=args, train_dataset=data,
                                                               processing_class=tokenizer, callbacks=[Poison()])
    with pytest.raises(TrainingDiverged, match="at optimizer step 3: the loss is nan") as info:
        trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(info.value.last_finite_loss)
    _assert_sparse_and_finite(model, masks)
