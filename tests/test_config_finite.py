"""Every float setting of SAUConfig is a finite number, checked at construction; a bool is not a number.

The fields are found by walking the dataclass (`config.float_fields`) and the objectives' params under their flat
SAUConfig names (npo_beta, ...), so a float setting added later is covered.
"""

import dataclasses

import pytest
from transformers import TrainingArguments

from sau_trainer import SAUConfig
from sau_trainer.config import float_fields
from sau_trainer.objectives import OBJECTIVES
from sau_trainer.objectives.params import flat_names

INHERITED = {f.name for f in dataclasses.fields(TrainingArguments)}
FLAT_FLOATS = {flat for flat, ((obj, name), *_) in flat_names(OBJECTIVES).items()
               if name in float_fields(OBJECTIVES[obj].params)}
OWN_FLOATS = sorted({n for n in float_fields(SAUConfig) if n not in INHERITED} | FLAT_FLOATS)


def _config(**kw):
    return SAUConfig(output_dir="unused", report_to=[], **kw)


def test_the_walk_finds_the_float_settings():
    assert {"sau_topk", "sau_alpha", "npo_beta", "simnpo_delta", "sau_topk_mass", "retain_weight"} <= set(OWN_FLOATS)
    assert not {"objective", "sau", "max_length", "update_check_steps"} & set(OWN_FLOATS)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, False, "0.1"],
                         ids=["nan", "inf", "-inf", "True", "False", "str"])
@pytest.mark.parametrize("name", OWN_FLOATS)
def test_non_finite_or_non_numeric_float_settings_are_refused(name, value):
    with pytest.raises(ValueError, match=rf"^{name}=.* must be a finite number") as info:
        _config(**{name: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["learning_rate", "weight_decay", "max_grad_norm", "adam_epsilon"])
def test_non_finite_training_arguments_are_refused(name):
    with pytest.raises(ValueError, match=rf"^{name}=inf must be a finite number"):
        _config(**{name: float("inf")})


def test_sau_topk_true_is_not_a_number():
    with pytest.raises(ValueError, match=r"sau_topk=True must be a finite number"):
        _config(sau_topk=True)


@pytest.mark.parametrize("name", ["forget_weight", "retain_weight"])
def test_term_weights_are_not_negative(name):
    with pytest.raises(ValueError, match=rf"{name}=-1.0 must be >= 0"):
        _config(**{name: -1.0})
    assert getattr(_config(**{name: 0.5}), name) == 0.5


def test_finite_values_and_none_where_allowed_pass():
    config = _config(sau_alpha=0, simnpo_delta=-0.5, sau_topk_mass=None, pdu_epsilon=None, learning_rate=1e-5)
    assert config.sau_alpha == 0 and config.simnpo_delta == -0.5
