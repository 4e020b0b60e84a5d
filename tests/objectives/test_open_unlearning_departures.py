"""Where the objectives depart from open-unlearning's code, and the options that reproduce it:

* RMU's masked activation MSE: the per-example mean (WMDP paper) by default; ``rmu_mse_mean="open-unlearning"``
  gives mean(S) x mean(1/n), what open-unlearning's [b] / [b, 1] broadcast computes;
* the KL retain term: every non-padding position of the retain sequence by default; ``retain_kl_positions=
  "open-unlearning"`` averages over all b x T positions (prompt and padding included), ``"answer"`` over the
  supervised next-token positions (the former definition);
* PDU's per-epoch dual step: after ``pdu_dual_warmup_epochs`` completed epochs (5: after epochs 5, 6, 7, 8);
* the definitions' versions, which the pipeline puts in a task's settings so that its hash changes with them.

Every number is checked against a float64 loop written from the formulas, on rows of unequal length."""

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

from sau_trainer import SAUConfig
from sau_trainer.objectives import OBJECTIVES, definitions
from sau_trainer.objectives.losses import retain_kl
from sau_trainer.objectives.rmu import masked_activation_mse


def _rmu_case():
    g = torch.Generator().manual_seed(1)
    h, target = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    labels = torch.tensor([[-100, 5, 6, -100, -100, -100],   # 1 masked position
                           [-100, -100, 1, 2, 3, 4],         # 4
                           [7, 8, -100, -100, -100, -100]])  # 2
    sums, counts = [], []
    for i in range(3):
        ts = [t for t in range(6) if labels[i, t] != -100]
        sums.append(sum(float(((h[i, t].double() - target[i, t].double()) ** 2).mean()) for t in ts))
        counts.append(len(ts))
    return h, target, labels != -100, sums, counts


def test_rmu_mse_per_example_mean_by_default():
    h, target, mask, sums, counts = _rmu_case()
    want = sum(s / n for s, n in zip(sums, counts, strict=True)) / 3  # mean_i S_i / n_i
    assert float(masked_activation_mse(h, target, mask)) == pytest.approx(want, rel=1e-6)


def test_rmu_mse_open_unlearning_broadcast():
    h, target, mask, sums, counts = _rmu_case()
    # open-unlearning: S [b] / n [b, 1] -> [b, b] matrix S_j / n_i, then its mean
    want = sum(sums[j] / counts[i] for i in range(3) for j in range(3)) / 9
    got = float(masked_activation_mse(h, target, mask, "open-unlearning"))
    assert got == pytest.approx(want, rel=1e-6)
    per_example = sum(s / n for s, n in zip(sums, counts, strict=True)) / 3
    assert abs(got - per_example) > 1e-3 * per_example  # rows of unequal length: the two differ
    same = torch.ones(3, 6, dtype=torch.bool)  # rows of equal length: the two agree
    assert float(masked_activation_mse(h, target, same, "open-unlearning")) == pytest.approx(
        float(masked_activation_mse(h, target, same)), rel=1e-6)


def _kl_case():
    g = torch.Generator().manual_seed(2)
    b, t, v = 3, 7, 11
    logits, ref = torch.randn(b, t, v, generator=g) * 2, torch.randn(b, t, v, generator=g) * 2
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100, -100], [-100, -100, -100, -100, 2, 9, 1],
                           [-100, 6, 2, -100, -100, -100, -100]])
    return logits, ref, {"input_ids": torch.zeros(b, t, dtype=torch.long), "attention_mask": attention,
                         "labels": labels}


def _kl64(logits, ref, i, j):
    p_ref = torch.softmax(ref[i, j].double(), -1)
    return float((p_ref * (torch.log_softmax(ref[i, j].double(), -1) - torch.log_softmax(logits[i, j].double(), -1))
                  ).sum())


@pytest.mark.parametrize("positions", ["sequence", "answer", "open-unlearning"])
def test_retain_kl_positions_match_float64(positions):
    logits, ref, batch = _kl_case()
    b, t = batch["labels"].shape
    if positions == "sequence":  # every non-padding position, prompt and answer
        pos = [(i, j) for i in range(b) for j in range(t) if batch["attention_mask"][i, j]]
    elif positions == "answer":  # positions whose next token is supervised
        pos = [(i, j) for i in range(b) for j in range(t - 1) if batch["labels"][i, j + 1] != -100]
    else:  # every one of the b x T positions
        pos = [(i, j) for i in range(b) for j in range(t)]
    want = sum(_kl64(logits, ref, i, j) for i, j in pos) / len(pos)
    assert float(retain_kl(logits, ref, batch, positions)) == pytest.approx(want, rel=1e-5)


def test_retain_kl_definitions_differ_and_default_is_sequence(tmp_path):
    logits, ref, batch = _kl_case()
    values = {p: float(retain_kl(logits, ref, batch, p)) for p in ("sequence", "answer", "open-unlearning")}
    assert len({round(v, 6) for v in values.values()}) == 3
    args = SAUConfig(output_dir=str(tmp_path), report_to=[], objective="graddiff", retain_loss="kl")
    assert args.retain_kl_positions == "sequence"
    with pytest.raises(ValueError, match="retain_kl_positions='all' is not allowed"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], retain_kl_positions="all")
    with pytest.raises(ValueError, match="rmu_mse_mean='batch' is not allowed"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="rmu", rmu_mse_mean="batch")


@pytest.mark.parametrize("positions", ["sequence", "open-unlearning"])
def test_objective_retain_term_uses_the_chosen_positions(tokenizer, tiny_splits, tmp_path, positions):
    """GradDiff's KL retain term on a real batch of unequal rows equals `retain_kl` over the chosen positions."""
    from sau_trainer.data.qa import QACollator, tokenize_rows
    from sau_trainer.objectives import ObjectiveContext

    model = sparse_model(tokenizer)
    ref = sparse_model(tokenizer)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    retain = QACollator(tokenizer)(tokenize_rows(qa(tiny_splits, "retain90", 4), tokenizer))
    assert (retain["attention_mask"] == 0).any()  # padding present: the definitions differ
    args = SAUConfig(output_dir=str(tmp_path), report_to=[], objective="graddiff", retain_loss="kl",
                     retain_kl_positions=positions)
    obj = OBJECTIVES["graddiff"](args)
    with torch.no_grad():
        got = obj.retain_term(model, retain, ObjectiveContext(ref_model=ref))
        logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        ref_logits = ref(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
    b, t = retain["labels"].shape
    keep = [(i, j) for i in range(b) for j in range(t) if positions != "sequence" or retain["attention_mask"][i, j]]
    want = sum(_kl64(logits, ref_logits, i, j) for i, j in keep) / len(keep)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_rmu_objective_uses_the_chosen_mean(tokenizer, tiny_splits, tmp_path):
    """RMU's forget term with each option equals masked_activation_mse of the hooked block's output."""
    from sau_trainer.data.qa import QACollator, tokenize_rows
    from sau_trainer.objectives import ObjectiveContext
    from sau_trainer.objectives.rmu import CONTROL, _Capture

    model = sparse_model(tokenizer)
    forget = QACollator(tokenizer)(tokenize_rows(qa(tiny_splits, "forget10", 4), tokenizer))
    mask = forget["labels"] != -100
    assert len(set(mask.sum(1).tolist())) > 1  # rows of unequal length
    got = {}
    for mean in ("example", "open-unlearning"):
        args = SAUConfig(output_dir=str(tmp_path), report_to=[], objective="rmu", rmu_mse_mean=mean)
        rmu = OBJECTIVES["rmu"](args)
        rmu.bind_model(model)
        ctx = ObjectiveContext(tensors={CONTROL: torch.full((model.config.hidden_size,), 0.5)})
        with torch.no_grad(), _Capture(rmu._layer) as cap:
            got[mean] = float(rmu.forget_term(model, forget, ctx)[0])
        sq = (cap.value.double() - 0.5).square().mean(-1)
        sums, counts = (sq * mask).sum(1), mask.sum(1).double()
        want = (sums / counts).mean() if mean == "example" else sums.mean() * (1 / counts).mean()
        assert got[mean] == pytest.approx(float(want), rel=1e-5)
    assert got["example"] != pytest.approx(got["open-unlearning"], rel=1e-4)


def test_pdu_epoch_dual_steps_after_the_warm_up_epochs(tokenizer, tiny_splits, tmp_path):
    """Warm-up 5, 8 epochs, dual step at epoch ends: lambda moves after epochs 5, 6, 7 and 8 (counted from 1),
    as open-unlearning's "after 5 completed epochs"; the first version of the package moved it after 6, 7, 8."""
    from transformers import TrainerCallback

    from sau_trainer.objectives.pdu import DUAL

    lams = []

    class AfterEpoch(TrainerCallback):  # added after SAUTrainer's own callback: sees lambda after its step
        def on_epoch_end(self, args, state, control, **kwargs):
            lams.append(float(trainer.objective_ctx.tensors[DUAL]))

    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 4),
                           qa(tiny_splits, "retain90", 4), tmp_path, objective="pdu", sau=False, learning_rate=0.0,
                           max_steps=-1,
                           num_train_epochs=8, per_device_train_batch_size=4, pdu_dual_update_upon="epoch",
                           pdu_dual_warmup_epochs=5, pdu_epsilon=0.0, pdu_dual_lr=1.0)
    trainer.add_callback(AfterEpoch())
    trainer.train()
    assert len(lams) == 8
    moved = [e + 1 for e in range(8) if lams[e] != (lams[e - 1] if e else 1.0)]
    assert moved == [5, 6, 7, 8]


def test_definitions_follow_the_changed_defaults():
    assert definitions("graddiff", {}) == {} and definitions("npo", {"retain_loss": "nll"}) == {}
    assert definitions("graddiff", {"retain_loss": "kl"}) == {"retain_kl": 2}
    assert definitions("rmu", {}) == {}  # embed_diff: unchanged
    assert definitions("rmu", {"retain_loss": "kl"}) == {"retain_kl": 2}
    assert definitions("ga", {"retain_loss": "kl"}) == {}  # no retain term
    assert definitions("pdu", {}) == {}  # per-step dual updates: unchanged
    assert definitions("pdu", {"pdu_dual_update_upon": "epoch"}) == {"pdu_epoch_dual_step": 2}
    assert definitions("pdu", {"pdu_dual_update_upon": "epoch", "pdu_dual_warmup_epochs": 0}) == {}
    assert set(OBJECTIVES) >= {"altpo"}


def test_changed_definitions_change_only_the_affected_unlearning_tasks():
    """The planned unlearning tasks carry the versions of the changed definitions they compute, so an existing
    output directory recomputes those runs (a new hash) and keeps every other run's cache key."""
    from sau_trainer.pipeline import plan, validate
    from sau_trainer.pipeline.runner import hash_tasks

    base = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]},
            "unlearn": {"objective": ["graddiff", "npo", "pdu"], "sau": [True], "model": ["dense"],
                        "objective_args": {"npo": {"retain_loss": "kl"}, "pdu": {"pdu_dual_update_upon": "epoch"}}}}
    def unlearn_tasks(recipe):
        planned = plan(validate(recipe))
        hash_tasks(planned)
        return {t.settings["objective"]: t for t in planned if t.kind == "unlearn"}

    tasks = unlearn_tasks(base)
    assert "definitions" not in tasks["graddiff"].settings
    assert tasks["npo"].settings["definitions"] == {"retain_kl": 2}
    assert tasks["pdu"].settings["definitions"] == {"pdu_epoch_dual_step": 2}
    plain = {**base, "unlearn": {**base["unlearn"], "objective_args": {}}}
    again = unlearn_tasks(plain)
    assert "definitions" not in again["npo"].settings and "definitions" not in again["pdu"].settings
    assert again["graddiff"].hash == tasks["graddiff"].hash  # an unaffected run keeps its cache key
