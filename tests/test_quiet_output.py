"""What a run prints when its output goes to a log file: no progress bars, no per-matrix dicts, no warnings
about settings the package itself chose."""

import io
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bars_restored():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    yield
    (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_one_switch_for_every_bar(bars_restored):
    from transformers.utils import logging as hf_logging

    from sau_trainer.progress import quiet_unless_terminal, show_progress

    hf_logging.enable_progress_bar()
    assert show_progress(True) and not show_progress(False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert quiet_unless_terminal(Terminal()) is False and show_progress(True)
    assert quiet_unless_terminal(io.StringIO()) is True  # a log file
    assert not show_progress(True) and not hf_logging.is_progress_bar_enabled()  # ours and transformers' bars


def test_the_pipeline_passes_checkpointing_without_a_deprecation_warning():
    from transformers import TrainingArguments

    from sau_trainer.pipeline.stages import _checkpointing_kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = TrainingArguments(output_dir="unused", report_to=[], **_checkpointing_kwargs(True))
    assert args.gradient_checkpointing is True  # read under the old name by the pipeline and the trainer


@pytest.mark.slow  # a subprocess that imports torch and transformers: about 10 s idle, 25 s on a busy CPU
def test_eval_into_a_log_file_has_no_progress_bars(tmp_path, tokenizer):
    from sau_trainer.modeling import build_llama

    model_dir = tmp_path / "model"
    build_llama("tiny", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    script = shutil.which("sau-trainer")
    cmd = [script] if script else [sys.executable, "-m", "sau_trainer"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = tmp_path / "eval.log"
    with open(log, "w") as f:  # stdout and stderr into a file, as `... > eval.log 2>&1`
        proc = subprocess.run([*cmd, "eval", "--model", str(model_dir), "--output-dir", str(tmp_path / "out"),
                               "--max-new-tokens", "2", "--batch-size", "64"], stdout=f, stderr=subprocess.STDOUT,
                              env=env, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "it/s]" not in text and "Loading weights" not in text and "%|" not in text, text[-3000:]
    assert "Failed to load CPU gemm_4bit_forward" not in text  # bitsandbytes' import-time line
    assert "Setting accelerator to CPU" not in text  # DeepSpeed's, where it is installed
    assert "Using 1 CPU thread" in text  # the small-model default, said once
    assert (tmp_path / "out/results.json").is_file()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the warning is about machines without one")
def test_training_without_an_accelerator_does_not_warn_about_pinned_memory(tmp_path, tokenizer, tiny_splits):
    from sau_trainer.finetuning import finetune
    from sau_trainer.modeling import build_llama

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(build_llama("tiny", tokenizer), tokenizer, tiny_splits["forget01"], str(tmp_path), num_train_epochs=1,
                 save=False, disable_tqdm=True, logging_steps=1000)
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_sau_logs_a_summary_and_keeps_per_matrix_statistics_in_the_logged_metrics(tmp_path, tokenizer, tiny_splits,
                                                                                 caplog):
    from sau_trainer import SAUConfig, SAUTrainer, prune_model
    from sau_trainer.modeling import build_llama

    model = build_llama("tiny", tokenizer)
    prune_model(model, "magnitude", 0.5, progress=False)
    args = SAUConfig(output_dir=str(tmp_path), objective="npo", sau=True, learning_rate=1e-3, max_steps=1,
                     per_device_train_batch_size=4, disable_tqdm=True, save_strategy="no", report_to=[])
    trainer = SAUTrainer(model, args, forget_dataset=tiny_splits["forget01"], retain_dataset=tiny_splits["retain99"],
                         processing_class=tokenizer)
    with caplog.at_level(logging.INFO, logger="sau_trainer.metrics"):  # a log line with disable_tqdm, no dict
        trainer.train()
    printed = "\n".join(r.getMessage() for r in caplog.records if r.name == "sau_trainer.metrics")
    assert "sau/w_min" in printed and "sau/selected_fraction/" not in printed
    logged = next(h for h in trainer.state.log_history if "sau/w_min" in h)
    assert sum(k.startswith("sau/selected_fraction/") for k in logged) == 14  # 2 layers x 7 matrices


def test_a_recipe_with_disable_tqdm_turns_every_bar_off(tmp_path, bars_restored):
    from transformers.utils import logging as hf_logging

    from sau_trainer.cli import build_parser
    from sau_trainer.pipeline import cli as run_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {shape: tiny}\nprune: {method: [magnitude]}\n"
                      "unlearn: {model: [sparse], objective: [npo], sau: [true], args: {disable_tqdm: true}}\n")
    hf_logging.enable_progress_bar()
    args = build_parser(["run"]).parse_args(["run", str(recipe), "--dry-run", "--output-dir", str(tmp_path / "o")])
    assert run_cli.main(args) == 0  # the pipeline's own entry point (the console script also checks the terminal)
    assert not hf_logging.is_progress_bar_enabled()


def test_save_model_with_disable_tqdm_writes_no_bar(tmp_path, tokenizer, tiny_splits, capsys, bars_restored):
    """transformers' "Writing model shards" bar does not read ``disable_tqdm``; SAUTrainer's save_model does, and
    leaves the switch as it found it."""
    import inspect

    import transformers.modeling_utils
    from transformers.utils import logging as hf_logging

    from sau_trainer import SAUConfig, SAUTrainer, prune_model
    from sau_trainer.modeling import build_llama

    has_bar = "Writing model shards" in inspect.getsource(transformers.modeling_utils)
    hf_logging.enable_progress_bar()
    model = build_llama("tiny", tokenizer)
    prune_model(model, "magnitude", 0.5, progress=False)
    for quiet in (True, False):
        args = SAUConfig(output_dir=str(tmp_path / str(quiet)), objective="ga", max_steps=1, disable_tqdm=quiet,
                         per_device_train_batch_size=4, save_strategy="no", report_to=[])
        trainer = SAUTrainer(model, args, forget_dataset=tiny_splits["forget01"], processing_class=tokenizer)
        capsys.readouterr()
        trainer.save_model()
        written = capsys.readouterr().err
        if quiet:
            assert "Writing model shards" not in written
        elif has_bar:  # transformers' own bar (newer transformers only) is shown when not quiet
            assert "Writing model shards" in written
        assert hf_logging.is_progress_bar_enabled()
        assert (tmp_path / str(quiet) / "model.safetensors").exists()
