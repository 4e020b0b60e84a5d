"""The built-in benchmark's sizes: the study presets make forget sets large enough for method comparisons (SPEC
section 7, "Resolution") with forget01/05/10 in their proportions, and the existing presets' rows are unchanged."""

import hashlib
import json

import pytest

from sau_trainer.data.benchmarks import get_benchmark
from sau_trainer.data.synthetic import FACTS, PRESETS, BenchmarkPreset, generate_benchmark
from sau_trainer.pipeline.resolution import ks_step

# sha256 of json.dumps(generate_benchmark(preset, seed), sort_keys=True), computed with the generator before the
# study presets and facts 21-30 were added (existing caches and tests rely on these rows)
OLD_ROWS = {
    ("tiny", 0): "9bb8d2630ce994d9f312d0e70f18e2495b9f7f6c36e50de7c8059341bae6a159",
    ("tiny", 1): "07207f9c59eac9d20cc2af51fa24f1878201eaa3a2c7cfa78d646bec238d255a",
    ("demo", 0): "07f5dcd79214e34cb916ffa8082bd28e13b21634d8e8adeb7a2b3adb4290252b",
    ("demo", 1): "df3ead9c55e663267b069ea51949f18b422f108343333d9e08e73f80ea476829",
    ("tofu", 0): "df930b399e77aa2b047b9ee6296d1e2054e8517a48bb6ec179f4552593eca4fb",
}


@pytest.mark.parametrize(("preset", "seed"), sorted(OLD_ROWS))
def test_the_existing_presets_rows_are_byte_identical(preset, seed):
    text = json.dumps(generate_benchmark(preset, seed), sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest() == OLD_ROWS[(preset, seed)]


@pytest.mark.parametrize(("preset", "people", "per_person", "forget_people"),
                         [("study", 100, 20, (1, 5, 10)), ("study-large", 150, 30, (2, 8, 15))])
def test_study_presets_make_large_forget_sets_in_tofus_proportions(preset, people, per_person, forget_people):
    b = generate_benchmark(preset, 0)
    assert len(b["full"]) == people * per_person
    assert len({r["question"] for r in b["full"]}) == people * per_person  # every question distinct
    for pct, k in zip((1, 5, 10), forget_people, strict=True):
        assert len(b[f"forget{pct:02d}"]) == len(b[f"forget{pct:02d}_perturbed"]) == k * per_person
        assert len(b[f"holdout{pct:02d}"]) == k * per_person
        assert len(b[f"retain{100 - pct:02d}"]) == (people - k) * per_person
        assert abs(k - pct * people / 100) <= 0.5  # the proportion, to the nearest person
    assert len(b["retain_perturbed"]) == forget_people[-1] * per_person
    # the perturbed answers are wrong and distinct, with all five columns, on the new facts too
    for r in b["forget10_perturbed"]:
        assert len(set(r["perturbed_answer"])) == 5 and r["paraphrased_answer"] not in r["perturbed_answer"]


def test_study_forget10_resolves_far_finer_than_tinys():
    """Near log10 forget quality -0.3 one forget example changing rank moves tiny's forget10 (20) by about 0.16 (the
    size of the first study's effect); the study presets' steps are well below it."""
    n_tiny = len(generate_benchmark("tiny", 0)["forget10"])
    n_study = len(generate_benchmark("study", 0)["forget10"])
    assert (n_tiny, n_study) == (20, 200)
    assert ks_step(n_tiny, -0.3)["step"] > 0.15
    assert ks_step(n_study, -0.3)["step"] < 0.08


def test_the_study_presets_are_recipe_choices():
    assert {"study", "study-large"} <= set(get_benchmark("synthetic").presets)
    assert get_benchmark("synthetic").check_options(preset="study") == []


def test_a_custom_size_uses_the_new_facts_and_bad_sizes_say_what_to_change():
    assert len(FACTS) == 30
    b = generate_benchmark(BenchmarkPreset("x", n_people=10, questions_per_person=30, n_general_facts=5), 0)
    assert len(b["full"]) == 300 and len(b["forget10"]) == 30
    with pytest.raises(ValueError, match="questions_per_person must be in 1..30"):
        generate_benchmark(BenchmarkPreset("x", n_people=10, questions_per_person=31, n_general_facts=5))
    with pytest.raises(ValueError, match="too many for the name pool"):
        generate_benchmark(BenchmarkPreset("x", n_people=440, questions_per_person=1, n_general_facts=5))
    assert PRESETS["tiny"].questions_per_person == 10  # the test presets keep their sizes
