"""`finetune(..., save=False)` leaves no folder behind (transformers' Trainer creates `output_dir` when it is
built, so the Python quick start used to leave an empty `out/finetuned/`); with `save=True` the model is there."""

from sau_trainer import build_llama, finetune


def rows(tiny_splits):
    return [{"question": r["question"], "answer": r["answer"]} for r in tiny_splits["forget10"][:4]]


def test_finetune_without_saving_creates_no_folder(tmp_path, tiny_splits, tokenizer):
    model = build_llama("tiny", tokenizer)
    finetune(model, tokenizer, rows(tiny_splits), str(tmp_path / "out" / "finetuned"), max_steps=1,
             per_device_train_batch_size=4, save=False, disable_tqdm=True)
    assert not (tmp_path / "out").exists()  # neither out/finetuned nor the out/ made for it


def test_finetune_keeps_a_folder_that_was_there_and_saves_when_asked(tmp_path, tiny_splits, tokenizer):
    (tmp_path / "out").mkdir()
    model = build_llama("tiny", tokenizer)
    finetune(model, tokenizer, rows(tiny_splits), str(tmp_path / "out" / "a"), max_steps=1,
             per_device_train_batch_size=4, save=False, disable_tqdm=True)
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out" / "a").exists()
    finetune(model, tokenizer, rows(tiny_splits), str(tmp_path / "out" / "b"), max_steps=1,
             per_device_train_batch_size=4, save=True, disable_tqdm=True)
    assert (tmp_path / "out" / "b" / "config.json").is_file()
