"""The MUSE loader on test-written files in the Hub's layouts, its errors, and the synthetic-muse generator."""

import json

import pytest

from sau_trainer.data import (
    BENCHMARKS,
    generate_muse_benchmark,
    get_benchmark,
    load_benchmark,
    muse,
    write_muse_benchmark,
)
from sau_trainer.data.muse import DEFAULT_SPLITS, load_muse, validate_muse_split


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_reads_the_hub_layout(tmp_path, fmt):
    paths = write_muse_benchmark(tmp_path, "tiny", seed=3, fmt=fmt)
    if fmt == "parquet":
        assert paths["knowmem/forget_qa"] == tmp_path / "knowmem" / "forget_qa-00000-of-00001.parquet"
    expected = generate_muse_benchmark("tiny", seed=3)
    assert load_benchmark("muse", data_dir=tmp_path) == {s: expected[s] for s in DEFAULT_SPLITS}
    assert load_benchmark("muse", data_dir=tmp_path, subset="books", splits=["privleak/retain"]) == {
        "privleak/retain": expected["privleak/retain"]}
    # the built-in benchmark reads its own written files back
    assert load_benchmark("synthetic-muse", data_dir=tmp_path, seed=3) == expected


def test_reads_a_json_array_file(tmp_path):
    rows = [{"prompt": "a b", "gt": "c d"}]
    (tmp_path / "verbmem").mkdir()
    (tmp_path / "verbmem" / "forget.json").write_text(json.dumps(rows))
    assert load_muse(["verbmem/forget"], tmp_path) == {"verbmem/forget": rows}


def test_missing_split_names_the_expected_file(tmp_path):
    write_muse_benchmark(tmp_path, "tiny", fmt="parquet")
    (tmp_path / "verbmem" / "forget-00000-of-00001.parquet").unlink()
    expected = str(tmp_path / "verbmem" / "forget-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError, match="MUSE split 'verbmem/forget'") as err:
        load_benchmark("muse", data_dir=tmp_path)
    assert expected in str(err.value) and "forget.jsonl" in str(err.value)


def test_missing_column_names_the_file_and_column(tmp_path):
    (tmp_path / "knowmem").mkdir()
    path = tmp_path / "knowmem" / "forget_qa.jsonl"
    path.write_text(json.dumps({"question": "Who?"}) + "\n")
    with pytest.raises(ValueError, match="has no column 'answer'") as err:
        load_muse(["knowmem/forget_qa"], tmp_path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"question": "Who?", "answer": 3}) + "\n")
    with pytest.raises(ValueError, match="column 'answer' of 'knowmem/forget_qa' must be a string"):
        load_muse(["knowmem/forget_qa"], tmp_path)
    with pytest.raises(ValueError, match="is empty"):
        validate_muse_split([], "raw/forget", "x")


def test_bad_names_and_the_hub_source(monkeypatch):
    with pytest.raises(ValueError, match="'<config>/<split>'"):
        load_muse(["forget"], "/nonexistent")
    with pytest.raises(ValueError, match="Unknown MUSE config 'rawr'"):
        load_muse(["rawr/forget"], "/nonexistent")
    with pytest.raises(ValueError, match="muse has no subset 'poetry'; choose one of"):
        load_benchmark("muse", subset="poetry")
    with pytest.raises(ValueError, match="synthetic-muse has no subset 'news'"):
        load_benchmark("synthetic-muse", subset="news")

    import datasets

    calls = []

    class Fake:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return Fake([{"text": "t"}] if config == "raw" else [{"question": "q"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_benchmark("muse", subset="books", splits=["raw/forget"]) == {"raw/forget": [{"text": "t"}]}
    assert calls == [("muse-bench/MUSE-Books", "raw", "forget")]
    with pytest.raises(ValueError, match="muse-bench/MUSE-News/knowmem/retain_qa: split 'knowmem/retain_qa' has no "
                                         "column 'answer'"):
        muse.load_hub_muse_split("knowmem/retain_qa", "muse-bench/MUSE-News")


def test_synthetic_muse_layout():
    a = generate_muse_benchmark("tiny", seed=0)
    assert a == generate_muse_benchmark("tiny", seed=0) and a != generate_muse_benchmark("tiny", seed=1)
    for name, rows in a.items():
        validate_muse_split(rows, name, "generated")
    forget = [r["text"] for r in a["raw/forget"]]
    # verbmem items are the forget texts split in two at a space; the privleak texts are the raw texts
    assert [f"{r['prompt']} {r['gt']}" for r in a["verbmem/forget"]] == forget
    assert [r["text"] for r in a["privleak/forget"]] == forget
    assert [r["text"] for r in a["privleak/holdout"]] == [r["text"] for r in a["raw/holdout"]]
    assert [r["text"] for r in a["privleak/retain"]] == [r["text"] for r in a["raw/retain2"]]
    # every forget question is answered in a forget text (its FAQ), and in no retain or holdout text
    others = [r["text"] for s in ("raw/retain1", "raw/retain2", "raw/holdout") for r in a[s]]
    for qa in a["knowmem/forget_qa"]:
        line = f"Question: {qa['question']}\nAnswer:  {qa['answer']}"
        assert any(line in t for t in forget) and not any(qa["question"] in t for t in others)
    # the in-context examples open every text, in the few-shot prompt's own format
    header = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in a["knowmem/forget_qa_icl"])
    assert all(t.startswith(header) for t in forget + others)
    assert len(a["knowmem/forget_qa"]) == 30 and len(a["knowmem/retain_qa"]) == 24


def test_registry_entries():
    assert {"synthetic", "synthetic-muse", "tofu", "muse"} <= set(BENCHMARKS)
    m = get_benchmark("synthetic-muse")
    assert m.protocol == "muse" and m.generated and m.train_splits("target") == ["raw/forget", "raw/retain1",
                                                                                 "raw/retain2"]
    assert m.train_splits("retain") == ["raw/retain1", "raw/retain2"]
    assert m.unlearning_splits("forget05") == ("raw/forget", "raw/retain1")
    t = get_benchmark("synthetic")
    assert t.train_splits("retain", "forget05") == ["retain95", "real_authors_perturbed", "world_facts_perturbed"]
    assert get_benchmark("tofu").train_splits("target") == ["full"]
    assert t.evaluation_splits("forget01")[-1] == "holdout01"
    with pytest.raises(ValueError, match="Unknown benchmark 'mmlu'; choose one of"):
        get_benchmark("mmlu")
