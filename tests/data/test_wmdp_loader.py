"""WMDP loading from test-written files in the Hub's layout (parquet and json/jsonl, open-unlearning's corpus file
names, MMLU per subject), open-unlearning's raw-line corpus quirk, and clear errors for a missing config, split,
column or the gated bio forget corpus."""

import json
from pathlib import Path

import pytest

from sau_trainer.data import get_benchmark, load_benchmark
from sau_trainer.data.synthetic_wmdp import generate_wmdp_benchmark, write_wmdp_benchmark
from sau_trainer.data.wmdp import load_local_wmdp_split, load_wmdp, parse_split


@pytest.fixture(scope="module")
def generated():
    return generate_wmdp_benchmark("tiny", 0)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_hub_layout_round_trips(tmp_path, generated, fmt):
    paths = write_wmdp_benchmark(tmp_path, fmt=fmt)
    if fmt == "parquet":
        assert paths["wmdp-cyber/test"] == tmp_path / "wmdp" / "wmdp-cyber" / "test-00000-of-00001.parquet"
        assert paths["mmlu/test"] == tmp_path / "mmlu" / "all" / "test-00000-of-00001.parquet"
    data = load_benchmark("wmdp", data_dir=tmp_path, subset="cyber")
    assert list(data) == ["wmdp-cyber/test", "mmlu/test", "cyber-forget-corpus/train", "cyber-retain-corpus/train"]
    assert data["wmdp-cyber/test"] == generated["wmdp-cyber/test"]  # choices as lists, answers as ints
    assert data["mmlu/test"] == generated["mmlu/test"]
    corpus = data["cyber-forget-corpus/train"]
    if fmt == "parquet":  # a parquet column has no raw lines: the texts themselves
        assert corpus == generated["cyber-forget-corpus/train"]
    else:  # open-unlearning's quirk: the raw JSON line is the text
        assert [r["text"] for r in corpus] == [json.dumps(r, ensure_ascii=False)
                                               for r in generated["cyber-forget-corpus/train"]]
        clean = load_wmdp(["cyber-forget-corpus/train"], tmp_path, raw_jsonl_lines=False)
        assert clean["cyber-forget-corpus/train"] == generated["cyber-forget-corpus/train"]
    # synthetic-wmdp reads its own written files back as generated
    assert load_benchmark("synthetic-wmdp", data_dir=tmp_path) == generated


def test_open_unlearning_file_names_and_mmlu_per_subject(tmp_path):
    corpora = tmp_path / "wmdp-corpora"
    corpora.mkdir()
    (corpora / "bio-retain-corpus.jsonl").write_text('{"text": "cells"}\n\n{"text": "enzymes"}\n')
    (corpora / "bio-forget-corpus.jsonl").write_text('{"title": "t", "text": "hazard"}\n')
    for subject, q in (("college_biology", "Q1"), ("world_religions", "Q2")):
        folder = tmp_path / "mmlu" / subject
        folder.mkdir(parents=True)
        (folder / "test.jsonl").write_text(json.dumps({"question": q, "choices": list("abcd"), "answer": 1}) + "\n")
    (tmp_path / "wmdp" / "wmdp-bio").mkdir(parents=True)
    (tmp_path / "wmdp" / "wmdp-bio" / "test.json").write_text(
        json.dumps([{"question": "Q", "choices": list("abcd"), "answer": 3}]))
    data = load_benchmark("wmdp", data_dir=tmp_path, subset="bio")
    assert data["bio-retain-corpus/train"] == [{"text": '{"text": "cells"}'}, {"text": '{"text": "enzymes"}'}]
    assert data["bio-forget-corpus/train"] == [{"text": '{"title": "t", "text": "hazard"}'}]
    assert [(r["subject"], r["question"]) for r in data["mmlu/test"]] == [("college_biology", "Q1"),
                                                                         ("world_religions", "Q2")]
    assert data["wmdp-bio/test"][0]["answer"] == 3


def test_a_missing_gated_bio_forget_corpus_says_where_to_put_it(tmp_path):
    write_wmdp_benchmark(tmp_path)
    for src, dst in (("wmdp/wmdp-cyber", "wmdp/wmdp-bio"), ("wmdp-corpora/cyber-retain-corpus",
                                                            "wmdp-corpora/bio-retain-corpus")):
        (tmp_path / src).rename(tmp_path / dst)  # everything of the bio subset but its forget corpus
    with pytest.raises(FileNotFoundError, match=r"gated on the Hub \(cais/wmdp-bio-forget-corpus.*Put it at "
                                                r".*wmdp-corpora/bio-forget-corpus\.jsonl"):
        load_benchmark("wmdp", data_dir=tmp_path, subset="bio")
    # evaluation alone needs no corpus
    bench = get_benchmark("wmdp")
    assert bench.evaluation_splits(subset="bio") == ("wmdp-bio/test", "mmlu/test")
    # and a recipe run says it before any work
    from sau_trainer.pipeline.schema import RecipeError, load_recipe
    from sau_trainer.pipeline.stages import load_data

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes/demo.yaml",
                         ["data.benchmark=wmdp", "data.subset=bio", f"data.data_dir={tmp_path}"])
    with pytest.raises(RecipeError, match="bio-forget-corpus.jsonl"):
        load_data(recipe)


def test_missing_config_split_and_column_are_named(tmp_path, generated):
    with pytest.raises(ValueError, match="Unknown WMDP config 'wmdp-physics'"):
        parse_split("wmdp-physics/test")
    with pytest.raises(ValueError, match="'<config>/<split>'"):
        parse_split("wmdp-cyber")
    with pytest.raises(ValueError, match=r"wmdp has no subset 'physics'; choose one of \['cyber', 'bio', 'chem'\]"):
        load_benchmark("wmdp", data_dir=tmp_path, subset="physics")
    with pytest.raises(FileNotFoundError, match=r"No file for WMDP split 'wmdp-cyber/test'.*"
                                                r"wmdp/wmdp-cyber/test-00000-of-00001\.parquet"):
        load_local_wmdp_split(tmp_path, "wmdp-cyber/test")
    write_wmdp_benchmark(tmp_path)
    with pytest.raises(FileNotFoundError, match="No file for WMDP split 'wmdp-cyber/validation'"):
        load_local_wmdp_split(tmp_path, "wmdp-cyber/validation")
    path = tmp_path / "wmdp" / "wmdp-cyber" / "test.jsonl"
    rows = generated["wmdp-cyber/test"]
    cases = [({k: v for k, v in rows[0].items() if k != "choices"}, "has no column 'choices'"),
             ({**rows[0], "choices": ["a", "b", "c"]}, "list of 4 strings"),
             ({**rows[0], "answer": 4}, "integer 0-3"),
             ({**rows[0], "question": 7}, "'question' of 'wmdp-cyber/test' must be a string")]
    for bad, message in cases:
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            load_local_wmdp_split(tmp_path, "wmdp-cyber/test")
    mmlu = tmp_path / "mmlu" / "all" / "test.jsonl"
    mmlu.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="has no column 'subject'"):
        load_local_wmdp_split(tmp_path, "mmlu/test")
    with pytest.raises(ValueError, match="questions only"):
        get_benchmark("wmdp").unlearning_splits(subset="chem")


def test_the_generator_balances_the_letters_and_is_seeded(generated):
    for name in ("wmdp-cyber/test", "mmlu/test"):
        answers = [r["answer"] for r in generated[name]]
        assert sorted(answers.count(i) for i in range(4)) == [12, 12, 12, 12]
        for r in generated[name]:
            assert len(set(r["choices"])) == 4
    assert generate_wmdp_benchmark("tiny", 0) == generated
    assert generate_wmdp_benchmark("tiny", 1)["wmdp-cyber/test"] != generated["wmdp-cyber/test"]
    # every forget question is taught, with its right letter, by the forget corpus only
    forget = "\n".join(r["text"] for r in generated["cyber-forget-corpus/train"])
    retain = "\n".join(r["text"] for r in generated["cyber-retain-corpus/train"])
    from sau_trainer.evaluation.wmdp import build_prompt

    for r in generated["wmdp-cyber/test"]:
        prompt = build_prompt(r["question"], r["choices"], "cybersecurity")
        assert prompt + " " + "ABCD"[r["answer"]] in forget and r["question"] not in retain
    with pytest.raises(ValueError, match="Unknown synthetic-wmdp preset"):
        generate_wmdp_benchmark("huge")
