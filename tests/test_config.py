import pytest

from sau_trainer import SAUConfig


def _cfg(tmp_path, **kw):
    return SAUConfig(output_dir=str(tmp_path), report_to=[], **kw)


def test_defaults_are_the_papers(tmp_path):
    cfg = _cfg(tmp_path)
    assert (cfg.sau, cfg.sau_topk, cfg.sau_alpha) == (True, 0.3, 0.1)
    assert (cfg.sau_topk_scope, cfg.sau_redistribution, cfg.sau_redistribution_target) == ("matrix", "matrix", "grad")


@pytest.mark.parametrize("field,value", [
    ("sau_topk_scope", "layer"), ("sau_redistribution", "global"), ("sau_redistribution_target", "weights"),
    ("sau_dense_params", "prune"), ("saliency_loss", "kl"), ("saliency_granularity", "token"),
    ("retain_loss", "mse"),
])
def test_invalid_choice_names_field_and_allowed_values(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"{field}='{value}' is not allowed; choose one of"):
        _cfg(tmp_path, **{field: value})


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_topk_outside_unit_interval(tmp_path, k):
    with pytest.raises(ValueError, match=r"sau_topk=.* must be in \(0, 1\]"):
        _cfg(tmp_path, sau_topk=k)


def test_unknown_objective(tmp_path):
    with pytest.raises(ValueError, match="objective='npoo' is not known; choose one of"):
        _cfg(tmp_path, objective="npoo")


def test_every_field_has_help():
    from dataclasses import fields

    from transformers import TrainingArguments

    base = {f.name for f in fields(TrainingArguments)}
    own = [f for f in fields(SAUConfig) if f.name not in base or f.name == "remove_unused_columns"]
    assert len(own) >= 18
    assert all(f.metadata.get("help") for f in own)
