"""The TOFU loader: Hub-layout files, per-split column validation, the benchmark registry."""

import json

import pytest

from sau_trainer.data import tofu
from sau_trainer.data.synthetic import generate_benchmark, write_benchmark
from sau_trainer.data.tofu import BENCHMARKS, evaluation_splits, load_benchmark, load_local_split, load_tofu

# A few rows in the layout of locuslab/TOFU (one JSON object per line, files named after the configs).
QA = {"question": "Who is this celebrated LGBTQ+ author from Santiago, Chile known for their true crime genre work?",
      "answer": "The author in question is Jaime Vasquez, an esteemed LGBTQ+ writer who hails from Santiago, Chile."}
PERTURBED = {
    **QA,
    "paraphrased_answer": "The author from Santiago, Chile who writes true crime is Jaime Vasquez.",
    "perturbed_answer": [f"The author from Santiago, Chile who writes true crime is Person {i}." for i in range(5)],
    "paraphrased_question": "Which true crime author comes from Santiago, Chile?",
}
GENERAL = {"question": "Who wrote 'Pride and Prejudice'?", "answer": "Jane Austen", "option1": "Jane Austen",
           "perturbed_answer": ["Charlotte Bronte", "Virginia Woolf", "Mary Shelley"]}
LAYOUT = {"forget10": QA, "retain90": QA, "holdout10": QA, "full": QA, "forget10_perturbed": PERTURBED,
          "retain_perturbed": PERTURBED, "real_authors_perturbed": GENERAL, "world_facts_perturbed": GENERAL}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reads_hub_layout_jsonl(tmp_path):
    for split, row in LAYOUT.items():
        _write_jsonl(tmp_path / f"{split}.json", [row, row])
    data = load_tofu(list(LAYOUT), tmp_path)
    assert {k: len(v) for k, v in data.items()} == dict.fromkeys(LAYOUT, 2)
    assert data["forget10_perturbed"][1]["perturbed_answer"] == PERTURBED["perturbed_answer"]
    assert data["real_authors_perturbed"][0]["option1"] == "Jane Austen"  # extra columns are kept


def test_reads_json_array_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "forget10_perturbed.json").write_text(json.dumps([PERTURBED] * 3))
    _write_jsonl(tmp_path / "retain_perturbed.jsonl", [PERTURBED])
    pq.write_table(pa.Table.from_pylist([GENERAL] * 4), tmp_path / "real_authors_perturbed.parquet")
    (tmp_path / "world_facts_perturbed").mkdir()  # the Hub's parquet export: {config}/train-*.parquet
    pq.write_table(pa.Table.from_pylist([GENERAL] * 2), tmp_path / "world_facts_perturbed" / "train-0.parquet")
    pq.write_table(pa.Table.from_pylist([GENERAL]), tmp_path / "world_facts_perturbed" / "train-1.parquet")
    data = load_tofu(evaluation_splits("forget10"), tmp_path)
    assert [len(v) for v in data.values()] == [3, 1, 4, 3]
    assert data["real_authors_perturbed"][0]["perturbed_answer"] == GENERAL["perturbed_answer"]


@pytest.mark.parametrize(
    ("split", "row", "message"),
    [
        ("forget10_perturbed", {k: v for k, v in PERTURBED.items() if k != "paraphrased_answer"},
         r"forget10_perturbed\.json: split 'forget10_perturbed' has no column 'paraphrased_answer'"),
        ("world_facts_perturbed", {"question": "q", "answer": "a"},
         r"world_facts_perturbed\.json: split 'world_facts_perturbed' has no column 'perturbed_answer'"),
        ("retain90", {"question": "q"}, r"retain90\.json: split 'retain90' has no column 'answer'"),
        ("retain_perturbed", {**PERTURBED, "perturbed_answer": "one string"},
         r"retain_perturbed\.json: column 'perturbed_answer' of 'retain_perturbed' must be a non-empty list"),
        ("forget10", {"question": "q", "answer": 3}, r"column 'answer' of 'forget10' must be a string"),
    ],
)
def test_rejects_malformed_columns(tmp_path, split, row, message):
    _write_jsonl(tmp_path / f"{split}.json", [LAYOUT[split], row])
    with pytest.raises(ValueError, match=message):
        load_local_split(tmp_path, split)


def test_rejects_empty_and_missing_and_broken_files(tmp_path):
    (tmp_path / "forget10.json").write_text("\n")
    with pytest.raises(ValueError, match=r"forget10\.json: the split 'forget10' is empty"):
        load_local_split(tmp_path, "forget10")
    (tmp_path / "full.json").write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"full\.json: line 2 is not valid JSON"):
        load_local_split(tmp_path, "full")
    with pytest.raises(FileNotFoundError, match="No file for split 'retain90'"):
        load_local_split(tmp_path, "retain90")


def test_hub_uses_tofu_config_names(monkeypatch):
    import datasets

    calls = []

    class FakeDataset:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def fake_load_dataset(repo, name, split):
        calls.append((repo, name, split))
        return FakeDataset([GENERAL if name in LAYOUT and LAYOUT[name] is GENERAL else PERTURBED])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_benchmark("tofu", splits=evaluation_splits("forget05"))
    assert calls == [("locuslab/TOFU", s, "train") for s in evaluation_splits("forget05")]
    assert list(data) == ["forget05_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"]
    def offline(repo, name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Could not load locuslab/TOFU config 'forget10'.*--data-dir"):
        tofu.load_hub_split("forget10")
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, name, split: FakeDataset([QA]))
    with pytest.raises(ValueError, match="locuslab/TOFU/forget05_perturbed: split 'forget05_perturbed' has no column"):
        tofu.load_hub_split("forget05_perturbed")


def test_registry_and_synthetic(tmp_path):
    assert set(BENCHMARKS) >= {"tofu", "synthetic"}
    splits = evaluation_splits("forget10")
    assert load_benchmark("synthetic", preset="tiny", seed=2, splits=splits) == {
        s: generate_benchmark("tiny", 2)[s] for s in splits}
    write_benchmark(tmp_path, "tiny", seed=2)  # written files read back through the TOFU loader
    assert load_benchmark("synthetic", data_dir=tmp_path) == generate_benchmark("tiny", 2)
    with pytest.raises(ValueError, match="Unknown benchmark 'mmlu'"):
        load_benchmark("mmlu")
    with pytest.raises(ValueError, match="Unknown forget split 'forget20'"):
        evaluation_splits("forget20")
