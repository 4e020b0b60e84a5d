"""The built-in benchmark: TOFU's splits and columns, split by person, deterministic bytes."""

import json

import pytest

from sau_trainer.data.synthetic import (
    PRESETS,
    BenchmarkPreset,
    generate_benchmark,
    n_forget_people,
    split_names,
    write_benchmark,
)

PERTURBED = {"question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer"}


def _people(rows):
    # Each question names its person; the name is the subject of every templated question.
    return {r["answer"].split(" was ")[0] for r in rows if " was born in the city of " in r["answer"]}


@pytest.fixture(scope="module")
def tiny():
    return generate_benchmark("tiny", 0)


def test_splits_and_columns_follow_tofu(tiny):
    assert list(tiny) == split_names()
    for name, rows in tiny.items():
        assert rows, name
        cols = set(rows[0])
        if name.endswith("_perturbed") and name.startswith(("forget", "retain")):
            assert cols == PERTURBED, name
            assert all(len(r["perturbed_answer"]) == 5 for r in rows)
        elif name in ("real_authors_perturbed", "world_facts_perturbed"):
            assert cols == {"question", "answer", "perturbed_answer"}, name
            assert all(len(r["perturbed_answer"]) == 3 for r in rows)
        else:
            assert cols == {"question", "answer"}, name
        for r in rows:
            assert set(r) == cols
            assert all(isinstance(r[c], str) and r[c] for c in cols - {"perturbed_answer"})


def test_forget_retain_split_by_person(tiny):
    p = PRESETS["tiny"]
    full_q = [r["question"] for r in tiny["full"]]
    assert len(full_q) == len(set(full_q)) == p.n_people * p.questions_per_person
    for pct in (1, 5, 10):
        forget, retain = tiny[f"forget{pct:02d}"], tiny[f"retain{100 - pct:02d}"]
        k = n_forget_people(p.n_people, pct)
        assert len(forget) == k * p.questions_per_person
        assert forget + retain != tiny["full"] and retain + forget == tiny["full"]  # forget = the last people
        assert _people(forget) and not _people(forget) & _people(retain)
        assert len(_people(forget)) == k
        assert [r["question"] for r in tiny[f"forget{pct:02d}_perturbed"]] == [r["question"] for r in forget]
        holdout = tiny[f"holdout{pct:02d}"]
        assert len(holdout) == len(forget) and not {r["question"] for r in holdout} & set(full_q)
    # nested forget sets, as in TOFU; retain_perturbed lies inside every retain split
    assert {r["question"] for r in tiny["forget01"]} <= {r["question"] for r in tiny["forget10"]}
    assert {r["question"] for r in tiny["retain_perturbed"]} <= {r["question"] for r in tiny["retain99"]}
    assert {r["question"] for r in tiny["retain_perturbed"]} <= {r["question"] for r in tiny["retain90"]}


def test_perturbed_answers_are_wrong_and_distinct(tiny):
    for name in ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        for r in tiny[name]:
            reference = r.get("paraphrased_answer", r["answer"])
            wrong = r["perturbed_answer"]
            assert len(set(wrong)) == len(wrong) and reference not in wrong and r["answer"] not in wrong
            # same sentence, one fact swapped: a shared prefix with the reference
            assert all(w.split()[:2] == reference.split()[:2] for w in wrong), (reference, wrong)
        if "paraphrased_answer" in tiny[name][0]:
            assert all(r["paraphrased_answer"] != r["answer"] for r in tiny[name])
            assert all(r["paraphrased_question"] != r["question"] for r in tiny[name])


def test_general_knowledge_does_not_collide_with_people(tiny):
    full_q = {r["question"] for r in tiny["full"]}
    general = tiny["real_authors_perturbed"] + tiny["world_facts_perturbed"]
    assert len(general) == 2 * PRESETS["tiny"].n_general_facts
    assert len({r["question"] for r in general}) == len(general)
    assert not {r["question"] for r in general} & full_q


def test_tiny_answers_are_short(tiny):
    lengths = [len(r["answer"].split()) for r in tiny["full"]]
    assert max(lengths) <= 20 and min(lengths) >= 4


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = write_benchmark(tmp_path / "a", "tiny", seed=3)
    b = write_benchmark(tmp_path / "b", "tiny", seed=3)
    c = write_benchmark(tmp_path / "c", "tiny", seed=4)
    assert sorted(p.name for p in a.values()) == sorted(f"{n}.json" for n in split_names())
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert a["full"].read_bytes() != c["full"].read_bytes()
    rows = [json.loads(line) for line in a["forget10_perturbed"].read_text().splitlines()]  # JSON lines
    assert rows == generate_benchmark("tiny", 3)["forget10_perturbed"]


def test_tofu_preset_has_tofu_sizes():
    b = generate_benchmark("tofu", 0)
    assert len(b["full"]) == 4000
    assert {k: len(b[k]) for k in ("forget01", "forget05", "forget10", "retain90", "holdout10")} == {
        "forget01": 40, "forget05": 200, "forget10": 400, "retain90": 3600, "holdout10": 400}
    assert len(b["retain_perturbed"]) == 400


def test_custom_preset_and_errors():
    b = generate_benchmark(BenchmarkPreset("mini", n_people=4, questions_per_person=3, n_general_facts=5), seed=1)
    assert len(b["full"]) == 12 and len(b["forget10"]) == 3 and len(b["world_facts_perturbed"]) == 5
    with pytest.raises(ValueError, match="Unknown synthetic benchmark preset 'huge'"):
        generate_benchmark("huge")
    with pytest.raises(ValueError, match="questions_per_person"):
        generate_benchmark(BenchmarkPreset("x", n_people=4, questions_per_person=99, n_general_facts=1))
