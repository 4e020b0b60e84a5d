"""What a run writes to the console: the Trainer's logs as log lines (never raw dicts on stdout), and what holds
for every run of a process alike said once per process, not once per run of a grid."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QUIET_RECIPE = """\
name: quiet
torch_threads: 1
model: {shape: tiny}
data: {benchmark: synthetic, preset: tiny, seed: 0, forget_split: forget10}
train_target: {num_train_epochs: 1, logging_steps: 5, args: {disable_tqdm: true}}
train_retain: {num_train_epochs: 1, logging_steps: 5, args: {disable_tqdm: true}}
prune: {method: [magnitude], sparsity: [0.5]}
unlearn: {model: [sparse], objective: [npo], sau: [true], learning_rate: [1.0e-3, 2.0e-3, 3.0e-3],
          num_train_epochs: 1, logging_steps: 2, args: {disable_tqdm: true}}
evaluate: {batch_size: 64, max_new_tokens: 4}
"""


def test_log_once_says_a_message_once_per_key():
    from sau_trainer.progress import log_once

    logger = logging.getLogger("sau_trainer.tests.once")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert log_once(logger, logging.INFO, "same %s", "thing") is True
        assert log_once(logger, logging.INFO, "same %s", "thing") is False
        assert log_once(logger, logging.INFO, "same %s", "other") is True  # another message
        assert log_once(logger, logging.INFO, "n=%d", 1, key="probe") is True
        assert log_once(logger, logging.INFO, "n=%d", 2, key="probe") is False  # same key, other numbers
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["same thing", "same other", "n=1"]


def test_trainer_logs_are_log_lines_not_dicts_on_stdout(tmp_path, tokenizer, tiny_splits, capsys, caplog):
    from sau_trainer import SAUConfig, SAUTrainer, finetune, prune_model
    from sau_trainer.modeling import build_llama

    model = build_llama("tiny", tokenizer)
    rows = tiny_splits["forget01"]
    with caplog.at_level(logging.INFO, logger="sau_trainer.metrics"):
        finetune(model, tokenizer, rows, str(tmp_path / "ft"), max_steps=2, logging_steps=1, save=False,
                 per_device_train_batch_size=4, disable_tqdm=True)
        prune_model(model, "magnitude", 0.5, progress=False)
        args = SAUConfig(output_dir=str(tmp_path / "u"), objective="ga", sau=True, max_steps=2, logging_steps=1,
                         per_device_train_batch_size=4, disable_tqdm=True, save_strategy="no", report_to=[])
        SAUTrainer(model, args, forget_dataset=rows, processing_class=tokenizer).train()
    out = capsys.readouterr().out
    assert "{'" not in out, out[-2000:]  # transformers' PrinterCallback printed each log as a dict
    lines = [r.getMessage() for r in caplog.records if r.name == "sau_trainer.metrics"]
    assert any(line.startswith("step 1: loss ") for line in lines), lines  # finetune's and the unlearning's
    assert any("sau/w_min" in line for line in lines), lines


@pytest.mark.slow  # a whole (tiny) recipe in a subprocess: about 15 s
def test_a_small_recipe_prints_nothing_on_stdout_and_says_per_process_facts_once(tmp_path):
    recipe = tmp_path / "quiet.yaml"
    recipe.write_text(QUIET_RECIPE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "sau_trainer", "run", str(recipe), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout[-2000:]  # no dicts, no bars: the console is the log
    err = proc.stderr.splitlines()
    assert sum("Re-zero after each optimizer step" in line for line in err) == 1  # 3 runs, said once
    assert sum("probed selected entries changed" in line for line in err) == 1
    assert sum("sau_trainer.metrics: step 0: sau/w_min" in line for line in err) == 3  # each run's numbers
