"""What differs between the lowest supported transformers (4.57) and 5.x, handled the same on both.
CI runs these (with the rest of the fast subset) on both versions: see "Supported versions" in the README."""

import pytest
from transformers import TrainingArguments

from sau_trainer.pipeline.stages import _warmup_kwargs


@pytest.mark.parametrize(("steps", "expected"), [(0, 0), (0.0, 0), (0.2, 2), (1 / 3, 4), (1.0, 1), (5, 5), (5.0, 5)])
def test_recipe_warmup_means_the_same_steps_on_every_version(tmp_path, steps, expected):
    """A recipe's ``warmup_steps`` below 1 is a fraction of all steps, rounded up (5.x: a float
    `warmup_steps`; 4.57: `warmup_ratio`, because its `warmup_steps` must be an int)."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **_warmup_kwargs(steps))
    assert args.get_warmup_steps(10) == expected
