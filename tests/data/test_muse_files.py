"""MUSE files in the Hub's layout with raw splits missing (a snapshot without raw/retain1, raw/retain2 and
raw/holdout): every missing split named at once, only the splits a recipe reads loaded, News and Books folders
told apart, and the unlearning chunks tokenised once."""

import json

import pytest

from sau_trainer.data import load_benchmark, write_muse_benchmark
from sau_trainer.data.muse import DEFAULT_SPLITS, EVALUATION_SPLITS, chunk_texts, load_muse
from sau_trainer.pipeline import validate
from sau_trainer.pipeline.schema import RecipeError
from sau_trainer.pipeline.stages import load_data, split_uses

MISSING = ("raw/retain1", "raw/retain2", "raw/holdout")


@pytest.fixture
def muse_dir(tmp_path):
    """The built-in MUSE-style benchmark in the Hub's parquet layout, without three raw splits."""
    data = tmp_path / "snapshot"
    paths = write_muse_benchmark(data, "tiny", seed=0, fmt="parquet")
    for split in MISSING:
        paths[split].unlink()
    return data


def test_every_missing_split_is_named_at_once(muse_dir):
    with pytest.raises(FileNotFoundError) as err:
        load_muse(DEFAULT_SPLITS, muse_dir)
    text = str(err.value)
    assert "3 MUSE splits" in text
    for split in MISSING:
        assert repr(split) in text and str(muse_dir / f"{split}-00000-of-00001.parquet") in text
    # the splits that are there load
    assert set(load_muse(EVALUATION_SPLITS + ("raw/forget",), muse_dir)) == set(EVALUATION_SPLITS) | {"raw/forget"}


def _recipe(muse_dir, model_dir, **extra) -> dict:
    return {
        "name": "muse-files", "torch_threads": 1,
        "model": {"name_or_path": str(model_dir)},
        "data": {"benchmark": "muse", "data_dir": str(muse_dir)},
        "train_target": {"enabled": False},
        "train_retain": {"enabled": False, "model": str(model_dir)},
        "prune": {"method": ["magnitude"], "sparsity": [0.5]},
        "unlearn": {"enabled": False},
        "evaluate": {"batch_size": 16},
        "report": {"plot": False},
        **extra,
    }


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    from sau_trainer.modeling import build_llama

    path = tmp_path / "model"
    build_llama("tiny", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_recipe_loads_only_the_splits_it_reads(muse_dir, model_dir):
    recipe = validate(_recipe(muse_dir, model_dir))
    assert set(split_uses(recipe)) == set(EVALUATION_SPLITS)  # magnitude pruning reads no calibration text
    data = load_data(recipe)  # not refused: raw/retain1, raw/retain2, raw/holdout are read by nothing here
    assert set(data) == set(EVALUATION_SPLITS)
    # wanda calibrates on "full": the target model's training texts
    wanda = validate(_recipe(muse_dir, model_dir, prune={"method": ["wanda"], "sparsity": [0.5]}))
    assert {"raw/forget", "raw/retain1", "raw/retain2"} <= set(split_uses(wanda))


def test_the_missing_splits_a_recipe_reads_are_named_together(muse_dir, model_dir):
    train = {"num_train_epochs": 1, "per_device_train_batch_size": 8}
    recipe = validate(_recipe(muse_dir, model_dir, train_target=train))
    with pytest.raises(RecipeError) as err:
        load_data(recipe)
    text = str(err.value)
    assert "could not load 2 splits" in text
    assert "'raw/retain1', read by training the target model" in text
    assert "'raw/retain2', read by training the target model" in text
    assert "raw/holdout" not in text and "Offline?" not in text
    # a tokenizer trained from scratch (model.shape) reads every raw text, holdout included
    shaped = validate({**_recipe(muse_dir, model_dir, train_target=train, evaluate={"max_prompt_tokens": 128}),
                       "model": {"shape": "tiny", "vocab_size": 300}})
    with pytest.raises(RecipeError) as err:
        load_data(shaped)
    assert "could not load 3 splits" in str(err.value) and "'raw/holdout', read by the tokenizer" in str(err.value)


@pytest.mark.slow
def test_a_run_on_the_snapshot_works(muse_dir, model_dir, tmp_path):
    from sau_trainer.pipeline import run_recipe

    out = tmp_path / "out"
    # the tiny model's 256 positions hold the end of each verbmem prompt (285-315 tokens with this tokenizer)
    summary = run_recipe(validate(_recipe(muse_dir, model_dir, evaluate={"max_prompt_tokens": 128})), out)
    assert "eval/finetuned+magnitude-50" in summary.ran
    report = json.loads((out / "report.json").read_text())
    assert "forget_verbmem_rouge" in {k for r in report["references"] for k in r["metrics"]}


def test_a_tiny_shape_on_real_muse_is_refused_before_training(muse_dir, model_dir):
    train = {"num_train_epochs": 1, "per_device_train_batch_size": 8}
    tiny = {**_recipe(muse_dir, model_dir, train_target=train), "model": {"shape": "tiny", "vocab_size": 300}}
    with pytest.raises(RecipeError) as err:
        validate(tiny)
    text = str(err.value)
    assert "model.shape: 256 positions" in text and "VerbMem would score 0" in text
    assert "at least 1418 positions" in text and "evaluate.max_prompt_tokens (e.g. 128" in text
    validate({**tiny, "evaluate": {"max_prompt_tokens": 128}})  # the fix is accepted
    validate({**tiny, "data": {"benchmark": "synthetic-muse"}})  # the built-in texts fit 256 positions
    with pytest.raises(RecipeError, match="evaluate.max_prompt_tokens: 128: .* for MUSE-protocol benchmarks only"):
        validate({**_recipe(muse_dir, model_dir), "data": {"benchmark": "synthetic"},
                  "evaluate": {"max_prompt_tokens": 128}})


# ------------------------------------------------------------------------------------ News or Books
def _news_layout(data):
    (data / "scal").mkdir()
    (data / "scal" / "forget_1.jsonl").write_text(json.dumps({"text": "a news article"}) + "\n")


def test_a_news_layout_is_not_read_as_books(muse_dir):
    _news_layout(muse_dir)
    with pytest.raises(ValueError) as err:
        load_benchmark("muse", data_dir=muse_dir, subset="books", splits=["verbmem/forget"])
    text = str(err.value)
    assert "looks like MUSE-News, not MUSE-Books" in text and "scal/" in text and "--subset news" in text
    assert load_benchmark("muse", data_dir=muse_dir, subset="news", splits=["verbmem/forget"])


def test_the_dataset_card_and_the_folder_name_say_which(tmp_path):
    card = tmp_path / "card"
    write_muse_benchmark(card, "tiny", fmt="jsonl")
    (card / "README.md").write_text("dataset_info:\n- config_name: sust\n  features:\n  - name: text\n")
    with pytest.raises(ValueError, match="README.md lists the scal/sust configs"):
        load_benchmark("muse", data_dir=card, subset="books", splits=["raw/forget"])
    cache = tmp_path / "datasets--muse-bench--MUSE-Books" / "snapshots" / "0123abc"
    write_muse_benchmark(cache, "tiny", fmt="jsonl")
    with pytest.raises(ValueError, match="named 'datasets--muse-bench--MUSE-Books'.*--subset books"):
        load_benchmark("muse", data_dir=cache, splits=["raw/forget"])  # the default subset is news
    assert load_benchmark("muse", data_dir=cache, subset="books", splits=["raw/forget"])


def test_books_texts_are_not_read_as_news(muse_dir):
    books = [{"prompt": f"Harry walked to Hogwarts with Hermione ({i}).", "gt": "Dumbledore was waiting."}
             for i in range(10)]
    books[0] = {"prompt": "An ordinary line.", "gt": "Nothing here."}
    (muse_dir / "verbmem" / "forget-00000-of-00001.parquet").unlink()
    (muse_dir / "verbmem" / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in books))
    with pytest.raises(ValueError) as err:
        load_benchmark("muse", data_dir=muse_dir, splits=["verbmem/forget"])
    assert "9 of the 10 rows read name Harry Potter's world" in str(err.value)
    assert load_benchmark("muse", data_dir=muse_dir, subset="books", splits=["verbmem/forget"])
    from sau_trainer.data.muse_subsets import subset_evidence

    # a news folder whose texts name the books on one row of 22 is still news
    one_mention = [{"prompt": "An ordinary line.", "gt": "x"}] * 21 + books[1:2]
    assert not subset_evidence(muse_dir, {"verbmem/forget": one_mention})["books"]


def test_the_built_in_files_point_to_neither_subset(tmp_path):
    from sau_trainer.data.muse_subsets import subset_evidence

    write_muse_benchmark(tmp_path, "tiny", fmt="jsonl")
    data = load_muse(None, tmp_path, "books")
    assert subset_evidence(tmp_path, data) == {"news": [], "books": []}


# ------------------------------------------------------------------------------------ chunking
class CountingTokenizer:
    """A tokenizer wrapper counting encode and decode calls."""

    def __init__(self, tok):
        self.tok, self.encodes, self.decodes = tok, 0, 0
        self.bos_token_id = tok.bos_token_id

    def __call__(self, *args, **kwargs):
        self.encodes += 1
        return self.tok(*args, **kwargs)

    def decode(self, *args, **kwargs):
        self.decodes += 1
        return self.tok.decode(*args, **kwargs)


def test_chunks_are_the_texts_tokens_tokenised_once(tokenizer):
    texts = [f"Profile {i}: Mira Talven was born in the city of Oslen and wrote {i} books." for i in range(40)]
    counting = CountingTokenizer(tokenizer)
    rows = chunk_texts(texts, counting, max_length=16)
    assert (counting.encodes, counting.decodes) == (1, 0)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    assert [r["input_ids"] for r in rows] == [[bos] + ids[i:i + 16] for i in range(0, len(ids), 16)]
    assert all(r["labels"] == [-100] + r["input_ids"][1:] and r["attention_mask"] == [1] * len(r["input_ids"])
               for r in rows)
