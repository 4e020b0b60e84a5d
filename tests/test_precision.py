"""Updates that land in low precision (SPEC section 2, "Precision"; sau_trainer/precision.py).

The criterion: 40 SAU steps of gradient ascent at lr 1e-5 on a 50% magnitude-pruned tiny Llama cast to
bf16 move the forget loss (evaluated in fp32 on `trainer.model` after `train()`) by at least half as much
as the same run in full fp32, for the settings of every real-model recipe and for bf16 weights with an
uncompensated AdamW (corrected there, or refused before the first step). Measured on this CPU: fp32 master
weights 0.998 of the fp32 move, torch-optimi Kahan AdamW 0.996, uncompensated bf16 AdamW 0.084.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from sau_trainer import SAUConfig, SAUTrainer, prune_model
from sau_trainer.data.qa import QACollator, tokenize_rows
from sau_trainer.modeling import build_llama
from sau_trainer.objectives import forward_nll
from sau_trainer.precision import (
    COMPENSATED_OPTIMIZERS,
    KAHAN,
    STOCHASTIC_ROUNDING,
    Compensation,
    UpdateProbe,
    check_precision,
    compensation_of,
    plan_precision,
    upcast_parameters,
    update_mode_rescaled,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR = 40, 1e-5
PRECISION_LOGGER = "sau_trainer.precision"


# ----------------------------------------------------------------------------- the decision (pure)
def _params(**dtypes):
    return {name: torch.zeros(4, 4, dtype=dtype) for name, dtype in dtypes.items()}


def test_bf16_weights_with_a_rounding_optimizer_are_upcast_refused_or_kept_by_policy():
    params = _params(a=torch.bfloat16, b=torch.float32, c=torch.float16)
    plain = Compensation(source="adamw_torch")
    up = plan_precision(params, "upcast", plain, autocast=True)
    assert up.action == "upcast" and up.names == ["a", "c"] and up.dtypes == {"bfloat16": 1, "float16": 1}
    refused = plan_precision(params, "error", plain, autocast=True)
    assert refused.action == "refuse" and refused.loses_updates
    assert "Precision" in refused.message and "compensated_optimizer" in refused.message
    kept = plan_precision(params, "keep", plain, autocast=True)
    assert kept.action == "keep" and kept.loses_updates and "lost" in kept.message
    assert plan_precision(_params(b=torch.float32), "error", plain, autocast=False).action == "none"
    with pytest.raises(ValueError, match="low_precision_weights"):
        plan_precision(params, "sometimes", plain, autocast=True)


def test_compensation_covers_only_its_dtypes_and_not_update_mode():
    params = _params(a=torch.bfloat16, c=torch.float16)
    kahan = Compensation(KAHAN, (torch.bfloat16, torch.float16))
    sr = Compensation(STOCHASTIC_ROUNDING, (torch.bfloat16,))
    assert plan_precision(params, "error", kahan, autocast=False).action == "none"
    fp16_left = plan_precision(params, "upcast", sr, autocast=False)  # stochastic rounding is bf16 only
    assert fp16_left.action == "upcast" and fp16_left.names == ["c"]
    update = plan_precision(params, "error", kahan, autocast=False, update_mode=True)  # W rescale rounds to nearest
    assert update.action == "refuse" and "update" in update.message
    only_a = plan_precision(params, "error", kahan, autocast=False, update_mode={"a"})  # only a's step is rescaled
    assert only_a.action == "refuse" and only_a.names == ["a"]


def test_update_mode_rescales_after_the_optimizer_only_where_w_is_not_one_number():
    from sau_trainer.masks import Layout

    layouts = {"m": Layout(), "e": Layout(experts=True)}
    assert update_mode_rescaled(["m", "e"], layouts, "matrix") == {"e"}  # one W per expert: a dense pass
    assert update_mode_rescaled(["m", "e"], layouts, "row") == {"m", "e"}
    assert update_mode_rescaled(["m", "e"], layouts, "param") == {"m", "e"}
    assert update_mode_rescaled(["m", "e"], layouts, "none") == set()


def test_compensation_is_read_from_the_optimizer_itself():
    optimi = pytest.importorskip("optimi")
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    assert compensation_of(optimi.AdamW([p], lr=1e-3)).method == KAHAN  # kahan_sum=None: optimi applies it to bf16
    assert compensation_of(optimi.AdamW([p], lr=1e-3, kahan_sum=False)).method is None
    assert compensation_of(torch.optim.AdamW([p])).method is None
    assert compensation_of(cls=optimi.AdamW, kwargs={"kahan_sum": True}).covers(torch.float16)
    assert not compensation_of(cls=torch.optim.AdamW, kwargs={}).covers(torch.bfloat16)


def test_upcast_keeps_parameter_objects_and_tied_weights(tokenizer):
    model = build_llama("tiny", tokenizer, tie_word_embeddings=True).to(torch.bfloat16)
    before = {n: p for n, p in model.named_parameters()}
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight is emb
    n = upcast_parameters(model, ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"])
    assert n == 2 and emb.dtype == torch.float32 and model.lm_head.weight is emb
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert model.model.layers[1].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p is before[n] for n, p in model.named_parameters())
    upcast_parameters(model, [], everything=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_update_probe_samples_selected_entries_and_counts_changes_exactly():
    w = torch.nn.Parameter(torch.arange(4096, dtype=torch.float32).reshape(64, 64))
    selected = torch.zeros(64, 64, dtype=torch.bool)
    selected[:, ::2] = True
    probe = UpdateProbe().sample({"w": w}, lambda name: selected, per_param=64, draws=512, seed=0)
    idx = probe.index["w"]
    assert len(probe) == 64 and bool(selected.reshape(-1)[idx].all())
    assert probe.changed_fraction({"w": w}) == 0.0
    with torch.no_grad():
        w.view(-1)[idx[:16]] += 1.0
        w.view(-1)[~selected.reshape(-1)] += 1.0  # unselected entries do not count
    assert probe.changed_fraction({"w": w}) == 16 / 64


def test_update_probe_counts_an_update_held_in_a_kahan_buffer():
    optimi = pytest.importorskip("optimi")
    w = torch.nn.Parameter(torch.full((64, 64), 0.5, dtype=torch.bfloat16))
    opt = optimi.AdamW([w], lr=1e-5, weight_decay=0.0, kahan_sum=True)
    w.grad = torch.ones_like(w)
    opt.step()  # the step is far below half a bf16 ULP at 0.5: the weight keeps its value, the buffer holds it
    assert bool((w == 0.5).all())
    probe = UpdateProbe().sample({"w": w}, lambda name: None, seed=0)
    opt.step()
    assert probe.changed_fraction({"w": w}, opt) == 1.0
    assert probe.changed_fraction({"w": w}) == 0.0  # without the buffer nothing seems to move


# ----------------------------------------------------------------------------- the criterion
@pytest.fixture(scope="module")
def pruned_bf16(tokenizer):
    """A tiny Llama, 50% magnitude-pruned, cast to bf16 (the fp32 reference starts from the same values)."""
    model = build_llama("tiny", tokenizer, seed=0)
    prune_model(model, "magnitude", sparsity=0.5, progress=False)
    return model.to(torch.bfloat16)


@pytest.fixture(scope="module")
def forget_rows(tiny_splits):
    return [{"question": r["question"], "answer": r["answer"]} for r in tiny_splits["forget10"]]


def _forget_loss(model, rows, tokenizer) -> float:
    """Mean answer-token NLL of the forget set, in fp32 (on a float32 copy of the model)."""
    model = copy.deepcopy(model).float().eval()
    batch = QACollator(tokenizer)(tokenize_rows(rows, tokenizer, 128))
    with torch.no_grad():
        nll_sum, count, _ = forward_nll(model, batch)
    return float(nll_sum.sum() / count.sum())


def _args(out, **kw) -> SAUConfig:
    settings = dict(output_dir=str(out), report_to=[], per_device_train_batch_size=4, learning_rate=LR,
                    max_steps=STEPS, save_strategy="no", disable_tqdm=True, logging_steps=1000, weight_decay=0.0,
                    seed=0, optim="adamw_torch", lr_scheduler_type="constant", objective="ga", use_cpu=True)
    settings.update(kw)
    return SAUConfig(**settings)


def _move(model, args, rows, tokenizer, **trainer_kw) -> tuple[float, SAUTrainer]:
    """How far `train()` moves the fp32 forget loss, and the trainer."""
    before = _forget_loss(model, rows, tokenizer)
    args = dataclasses.replace(args)  # fresh device setup: resets accelerate's state (bf16 and fp32 runs alternate)
    trainer = SAUTrainer(model, args, forget_dataset=rows, processing_class=tokenizer, **trainer_kw)
    trainer.train()
    return _forget_loss(trainer.model, rows, tokenizer) - before, trainer


_REFERENCES: dict = {}


def _fp32_move(pruned_bf16, args, rows, tokenizer) -> float:
    """The same run in full fp32: fp32 weights (the bf16 values), no autocast, no precision correction."""
    key = (str(args.optim), args.compensated_optimizer, args.weight_decay, args.gradient_checkpointing, args.sau)
    if key not in _REFERENCES:
        ref_args = dataclasses.replace(args, bf16=False, output_dir=args.output_dir + "-fp32")
        _REFERENCES[key] = _move(copy.deepcopy(pruned_bf16).float(), ref_args, rows, tokenizer)[0]
    return _REFERENCES[key]


def test_bf16_with_uncompensated_adamw_is_corrected_and_moves_the_forget_loss(
        pruned_bf16, forget_rows, tokenizer, tmp_path, caplog):
    args = _args(tmp_path / "bf16", bf16=True)  # the default: low_precision_weights="upcast"
    reference = _fp32_move(pruned_bf16, args, forget_rows, tokenizer)
    assert reference > 0.05  # gradient ascent raises the forget loss
    with caplog.at_level(logging.INFO, logger=PRECISION_LOGGER):
        moved, trainer = _move(copy.deepcopy(pruned_bf16), args, forget_rows, tokenizer)
    assert trainer.precision_plan.action == "upcast"
    assert any("casting these parameters to float32 master weights" in r.message for r in caplog.records)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert trainer.update_check.result == 1.0  # every probed entry of G moved on the first step
    print(f"forget-loss move / fp32 move: {moved / reference:.3f}")
    assert moved >= 0.5 * reference, (moved, reference)


def test_bf16_with_uncompensated_adamw_is_refused_before_the_first_step(
        pruned_bf16, forget_rows, tokenizer, tmp_path):
    model = copy.deepcopy(pruned_bf16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"Precision: refusing to train, updates would be lost.*"
                                         r"low_precision_weights='upcast'.*compensated_optimizer="):
        SAUTrainer(model, _args(tmp_path, bf16=True, low_precision_weights="error"), forget_dataset=forget_rows,
                   processing_class=tokenizer)
    assert all(torch.equal(p, before[n]) and p.dtype == torch.bfloat16 for n, p in model.named_parameters())


def test_the_opt_out_is_warned_twice_and_really_loses_the_updates(pruned_bf16, forget_rows, tokenizer, tmp_path,
                                                                   caplog):
    """What the checks prevent: bf16 weights with plain AdamW move the forget loss about 0.05-0.1 as much."""
    args = _args(tmp_path / "keep", bf16=True, low_precision_weights="keep")
    reference = _fp32_move(pruned_bf16, args, forget_rows, tokenizer)
    with caplog.at_level(logging.WARNING, logger=PRECISION_LOGGER):
        moved, trainer = _move(copy.deepcopy(pruned_bf16), args, forget_rows, tokenizer)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("training anyway although updates will be lost" in m for m in warnings)
    assert any("only 0.0000 of the probed selected entries changed" in m for m in warnings)
    assert trainer.update_check.result == 0.0
    print(f"forget-loss move / fp32 move: {moved / reference:.3f}")
    assert moved < 0.2 * reference, (moved, reference)


def test_a_user_optimizer_over_bf16_weights_is_upcast_in_place_plain_baseline(pruned_bf16, forget_rows, tokenizer,
                                                                              tmp_path, caplog):
    sau = False  # the plain baseline (M only) needs the check as much as SAU
    model = copy.deepcopy(pruned_bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    args = _args(tmp_path / "user", bf16=True, sau=sau)
    reference = _fp32_move(pruned_bf16, args, forget_rows, tokenizer)
    with caplog.at_level(logging.WARNING, logger=PRECISION_LOGGER):
        moved, trainer = _move(model, args, forget_rows, tokenizer, optimizers=(optimizer, None))
    assert trainer.precision_plan.action == "upcast" and "the given optimizer (AdamW)" in trainer.precision_plan.message
    assert trainer.optimizer.optimizer is optimizer or trainer.optimizer is optimizer
    print(f"forget-loss move / fp32 move: {moved / reference:.3f}")
    assert moved >= 0.5 * reference, (moved, reference)
    with pytest.raises(ValueError, match="Precision: refusing"):
        fresh = copy.deepcopy(pruned_bf16)
        SAUTrainer(fresh, _args(tmp_path / "user2", bf16=True, sau=sau, low_precision_weights="error"),
                   forget_dataset=forget_rows, processing_class=tokenizer,
                   optimizers=(torch.optim.AdamW(fresh.parameters(), lr=LR), None))


def test_kahan_adamw_keeps_bf16_weights_and_moves_the_forget_loss(pruned_bf16, forget_rows, tokenizer, tmp_path):
    pytest.importorskip("optimi")
    args = _args(tmp_path / "kahan", bf16=True, compensated_optimizer="kahan_adamw", low_precision_weights="error")
    reference = _fp32_move(pruned_bf16, args, forget_rows, tokenizer)
    moved, trainer = _move(copy.deepcopy(pruned_bf16), args, forget_rows, tokenizer)
    assert trainer.precision_plan.action == "none"
    assert type(trainer.optimizer.optimizer).__module__.startswith("optimi")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert trainer.update_check.result == 1.0  # weight + Kahan buffer
    print(f"forget-loss move / fp32 move: {moved / reference:.3f}")
    assert moved >= 0.5 * reference, (moved, reference)


@pytest.mark.parametrize("redistribution", ["matrix", "row"])
def test_kahan_adamw_in_update_mode_lands_with_a_matrix_w_and_is_refused_with_a_row_w(
        redistribution, pruned_bf16, forget_rows, tokenizer, tmp_path):
    """Per-matrix W in update mode is a learning-rate scale the compensated optimizer applies itself; per-row W is
    a dense rescale after the step that rounds to nearest in bf16."""
    pytest.importorskip("optimi")
    args = _args(tmp_path / redistribution, bf16=True, compensated_optimizer="kahan_adamw", low_precision_weights="error",
                 sau=True, sau_topk=0.5, sau_redistribution_target="update", sau_redistribution=redistribution,
                 sau_alpha=1.0)
    if redistribution == "row":
        with pytest.raises(ValueError, match="rescales the step by W"):
            SAUTrainer(copy.deepcopy(pruned_bf16), args, forget_dataset=forget_rows, processing_class=tokenizer)
        return
    moved, trainer = _move(copy.deepcopy(pruned_bf16), args, forget_rows, tokenizer)
    assert trainer.precision_plan.action == "none"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert trainer.update_check.result == 1.0  # every probed entry of G moved (weight + Kahan buffer)
    assert moved > 0, moved


def test_a_missing_compensated_optimizer_package_is_a_clear_error(monkeypatch, pruned_bf16, forget_rows, tokenizer,
                                                                  tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "optimi", None)  # import optimi -> ImportError
    with pytest.raises(ImportError, match=r"needs torch-optimi.*sau-trainer\[precision\]"):
        SAUTrainer(copy.deepcopy(pruned_bf16), _args(tmp_path, compensated_optimizer="kahan_adamw"),
                   forget_dataset=forget_rows, processing_class=tokenizer)


def test_every_compensated_optimizer_is_a_config_choice():
    from sau_trainer.config import CHOICES

    assert set(COMPENSATED_OPTIMIZERS) | {"none"} == set(CHOICES["compensated_optimizer"])
    with pytest.raises(ValueError, match="compensated_optimizer"):
        SAUConfig(output_dir="x", compensated_optimizer="kahan")
    with pytest.raises(ValueError, match="update_check_steps"):
        SAUConfig(output_dir="x", update_check_steps=-1)


# ----------------------------------------------------------------------------- the real-model recipes
def _real_model_recipes() -> list[Path]:
    from sau_trainer.pipeline.schema import yaml_load

    out = []
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        data = yaml_load(path.read_text()) or {}
        if isinstance(data, dict) and (data.get("model") or {}).get("name_or_path"):
            out.append(path)
    assert out, "no recipe with model.name_or_path found"
    return out


PRECISION_KEYS = ("bf16", "optim", "weight_decay", "gradient_checkpointing", "args")


def _recipe_groups() -> list:
    """One case per distinct (model.dtype, unlearning precision settings), naming every recipe that has it.

    Recipes whose settings need torchao (stochastic rounding: torch.compile on a CPU) are marked slow.
    """
    from sau_trainer.pipeline.schema import load_recipe

    groups: dict[str, list[Path]] = {}
    for path in _real_model_recipes():
        recipe = load_recipe(path)
        u = dataclasses.asdict(recipe.unlearn)
        key = repr((recipe.model.dtype, [u[k] for k in PRECISION_KEYS]))
        groups.setdefault(key, []).append(path)
    return [pytest.param(paths[0], id="+".join(str(p.relative_to(ROOT / "recipes")) for p in paths),
                         marks=[pytest.mark.slow] if "'sr_adamw" in key else [])
            for key, paths in groups.items()]


def _unlearn_settings(recipe, sau: bool = True) -> dict:
    """One unlearning grid point's settings as `plan` makes them (the section without its grid axes)."""
    u = dataclasses.asdict(recipe.unlearn)
    for axis in ("model", "objective", "sau", "learning_rate", "seed"):
        u.pop(axis)
    from sau_trainer.benchmarks.registry import get_benchmark

    d = recipe.data
    bench = get_benchmark(d.benchmark)
    forget, retain = bench.unlearning_splits(retain_split=recipe.unlearn.retain_split, subset=d.subset,
                                             **bench.data_options(d))
    return {"unlearn": u, "objective": "ga", "sau": sau, "learning_rate": LR, "seed": 0, "forget_split": forget,
            "retain_split": retain}


@pytest.mark.parametrize("recipe_path", _recipe_groups())
def test_every_real_model_recipe_unlearns_with_updates_that_land(recipe_path, pruned_bf16, forget_rows, tokenizer,
                                                                  tmp_path, caplog):
    """The recipe's loading dtype and unlearning settings, as the pipeline turns them into an SAUConfig."""
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import Context, _dtype, unlearn_config

    recipe = load_recipe(recipe_path)
    s = _unlearn_settings(recipe)  # the criterion's run (GA, lr 1e-5, SAU); precision settings stay the recipe's
    s["unlearn"].update(per_device_train_batch_size=4, effective_batch_size=None, gradient_accumulation_steps=1,
                        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1000)
    s["unlearn"]["args"] = {**s["unlearn"]["args"], "max_steps": STEPS, "use_cpu": True, "disable_tqdm": True}
    args = unlearn_config(Context(recipe, tmp_path, {}), s, tmp_path / "run")
    if args.compensated_optimizer.startswith("sr_"):
        pytest.importorskip("torchao")
    dtype = _dtype(recipe.model.dtype)
    assert dtype == torch.bfloat16  # what the real-model recipes load
    reference = _fp32_move(pruned_bf16, args, forget_rows, tokenizer)
    with caplog.at_level(logging.INFO, logger=PRECISION_LOGGER):
        moved, trainer = _move(copy.deepcopy(pruned_bf16).to(dtype), args, forget_rows, tokenizer)
    assert trainer.precision_plan.action in ("none", "upcast")  # compensated, or corrected (and logged)
    assert any(r.message.startswith("Precision:") for r in caplog.records)
    print(f"{recipe_path.name}: forget-loss move / fp32 move: {moved / reference:.3f}")
    assert moved >= 0.5 * reference, (recipe_path.name, moved, reference)


def test_precision_fields_mean_the_same_directly_in_the_unlearn_section_or_under_args(tmp_path):
    from sau_trainer.pipeline.runner import hash_tasks
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import Context, plan, unlearn_config

    recipe_path = ROOT / "recipes/demo.yaml"
    direct = load_recipe(recipe_path, ["unlearn.low_precision_weights=error",
                                       "unlearn.compensated_optimizer=kahan_adamw"])
    nested = load_recipe(recipe_path, ["unlearn.args.low_precision_weights=error",
                                       "unlearn.args.compensated_optimizer=kahan_adamw"])
    a, b, default = plan(direct), plan(nested), plan(load_recipe(recipe_path))
    for tasks in (a, b, default):
        hash_tasks(tasks)
    assert [t.hash for t in a] == [t.hash for t in b]
    changed = {x.name for x, y in zip(a, default, strict=True) if x.hash != y.hash}
    assert changed and all(n.startswith(("models/dense-", "models/magnitude", "models/wanda", "eval/", "report"))
                           for n in changed)
    task = next(t for t in a if t.kind == "unlearn")
    args = unlearn_config(Context(direct, tmp_path, {}), task.settings, tmp_path / "run")
    assert (args.low_precision_weights, args.compensated_optimizer) == ("error", "kahan_adamw")


def test_the_real_model_recipes_never_plan_to_lose_updates(tmp_path, tokenizer):
    """Cheap companion of the criterion for every recipe (slow ones included): the decision alone."""
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import Context, _dtype, unlearn_config

    for path in _real_model_recipes():
        recipe = load_recipe(path, ["unlearn.args.use_cpu=true"])
        for sau in (False, True):
            args = unlearn_config(Context(recipe, tmp_path, {}), _unlearn_settings(recipe, sau), tmp_path / "run")
            model = build_llama("tiny", tokenizer).to(_dtype(recipe.model.dtype))
            decision = check_precision(model, args, update_mode=args.sau and args.sau_redistribution_target == "update")
            assert not decision.loses_updates, (path.name, sau, decision.message)


def test_finetuning_a_bf16_model_gets_the_same_check(pruned_bf16, forget_rows, tokenizer, tmp_path, caplog):
    from sau_trainer import finetune

    train = dict(num_train_epochs=1, learning_rate=LR, per_device_train_batch_size=4, save=False, use_cpu=True,
                 bf16=True, max_steps=2, disable_tqdm=True, optim="adamw_torch")
    model = copy.deepcopy(pruned_bf16)
    with pytest.raises(ValueError, match="Precision: refusing"):
        finetune(model, tokenizer, forget_rows, str(tmp_path / "a"), low_precision_weights="error", **train)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with caplog.at_level(logging.WARNING, logger=PRECISION_LOGGER):
        finetune(model, tokenizer, forget_rows, str(tmp_path / "b"), **train)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert any("float32 master weights" in r.message for r in caplog.records)
