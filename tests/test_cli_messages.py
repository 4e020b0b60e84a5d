"""The console script on a new user's mistakes: one clear line, a non-zero exit, never a traceback.

Each case runs the installed `sau-trainer` script (this tree on PYTHONPATH) in a subprocess, offline, as a user
would; Ctrl-C is a real SIGINT to a running `sau-trainer run`.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def command() -> list[str]:
    script = shutil.which("sau-trainer")
    return [script] if script else [sys.executable, "-m", "sau_trainer"]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def sau(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*command(), *map(str, args)], capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=300)


SMALL_RECIPE = """\
name: small
model: {shape: tiny}
prune: {method: [magnitude]}
unlearn: {model: [sparse], objective: [npo], sau: [true], learning_rate: [1.0e-3]}
"""


@pytest.fixture
def small_recipe(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_RECIPE)
    return path


def one_error_line(proc: subprocess.CompletedProcess, subcommand: str) -> str:
    """The process failed with exit 2 and said why in exactly one line, prefixed like argparse's errors."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"sau-trainer {subcommand}: error: "), lines[0]
    return lines[0]


def test_prune_a_model_path_that_does_not_exist(tmp_path):
    line = one_error_line(sau("prune", "--model", "/nonexistent", "--method", "magnitude", "--sparsity", "0.5",
                              "--output-dir", tmp_path / "x"), "prune")
    assert "--model /nonexistent: no such directory" in line


@pytest.mark.slow  # a subprocess each (5-15 s); the fast set keeps one per subcommand
def test_prune_a_hub_id_that_is_not_cached_while_offline(tmp_path):
    line = one_error_line(sau("prune", "--model", "no-such-owner/no-such-model", "--method", "magnitude",
                              "--output-dir", tmp_path / "x"), "prune")
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line


@pytest.mark.slow  # a subprocess each (5-15 s); the fast set keeps one per subcommand
def test_prune_names_every_problem_at_once(tmp_path):
    line = one_error_line(sau("prune", "--model", "/nonexistent", "--method", "wanda", "--output-dir",
                              tmp_path / "x"), "prune")
    assert "--model /nonexistent" in line and "--method wanda needs --calibration" in line


def test_eval_errors_look_like_the_other_subcommands(tmp_path):
    # --log-level after the subcommand is accepted (it was rejected as an unrecognized argument)
    line = one_error_line(sau("eval", "--model", tmp_path / "missing", "--output-dir", tmp_path / "e",
                              "--log-level", "WARNING"), "eval")
    assert "--model" in line and "no such directory" in line


@pytest.mark.slow  # a subprocess each (5-15 s); the fast set keeps one per subcommand
def test_eval_of_a_directory_that_cannot_be_loaded(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    line = one_error_line(sau("eval", "--model", broken, "--output-dir", tmp_path / "e", "--log-level", "WARNING"),
                          "eval")  # (at INFO the evaluation's first progress line comes before)
    assert f"--model {broken}: cannot load it (" in line


@pytest.mark.slow  # a subprocess each (5-15 s); the fast set keeps one per subcommand
def test_run_into_an_output_path_that_is_a_file(tmp_path, small_recipe):
    (tmp_path / "f").touch()
    line = one_error_line(sau("run", small_recipe, "--output-dir", tmp_path / "f"), "run")
    assert "not a directory" in line


def test_run_without_arguments_asks_only_for_the_recipe():
    proc = sau("run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the following arguments are required: recipe" in proc.stderr and "KEY=VALUE\n" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "sau-trainer run: error: the following arguments are required: recipe"


@pytest.mark.slow  # the recipe checks themselves are tested in-process in tests/pipeline/test_recipe_schema.py
def test_a_wrong_objective_is_named_once_with_the_valid_values(tmp_path, small_recipe):
    proc = sau("run", small_recipe, "unlearn.objective=[npp]", "--dry-run",
               "--output-dir", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("graddiff") == 1 and "keys" not in proc.stderr
    assert "unlearn.objective[0]: 'npp' is not one of" in proc.stderr and "did you mean 'npo'?" in proc.stderr


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from sau_trainer.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(SUBCOMMANDS)
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []
    eval_help = sub.choices["eval"].format_help()
    for option in ("--batch-size", "--max-new-tokens", "--dtype", "--forget-split", "--threads"):
        assert option in eval_help


@pytest.mark.slow
def test_ctrl_c_during_run_says_how_to_resume(tmp_path):
    out = tmp_path / "demo"
    argv = [*command(), "run", str(ROOT / "recipes/demo.yaml"), "--output-dir", str(out)]
    # The child gets SIGINT's default disposition: a test run started in the background of a non-interactive shell
    # (as CI scripts may be) passes SIGINT ignored on to its children, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (out / "stages").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the first stage (the tokenizer) is finished: the run is under way
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sau-trainer run: interrupted")
    assert "re-run" in last and "resume" in last
    assert f"run {ROOT / 'recipes/demo.yaml'} --output-dir {out}" in last  # the same command, ready to paste


def test_small_models_get_one_thread_unless_told(tmp_path, tokenizer):
    import torch

    from sau_trainer.clitools import SMALL_MODEL_PARAMETERS, estimate_parameters, set_threads
    from sau_trainer.modeling import build_llama

    model = build_llama("tiny", tokenizer)
    model.save_pretrained(tmp_path)
    actual = sum(p.numel() for p in model.parameters())
    assert abs(estimate_parameters(tmp_path) - actual) / actual < 0.25  # from config.json, no weights read
    assert actual < SMALL_MODEL_PARAMETERS
    before = torch.get_num_threads()
    try:
        assert set_threads(None, tmp_path) == 1  # the default for a small model
        assert set_threads(2, tmp_path) == 2  # --threads wins
        torch.set_num_threads(before)
        assert set_threads(None, tmp_path / "nowhere") == before  # unknown size: torch's default stays
    finally:
        torch.set_num_threads(before)


def test_a_device_the_machine_lacks_is_named_before_any_work():
    import torch

    from sau_trainer.clitools import device_problem

    assert device_problem(None) is None and device_problem("cpu") is None
    assert "not a device name" in device_problem("cuda:x")
    if not torch.cuda.is_available():
        assert "no CUDA device on this machine" in device_problem("cuda")
    else:
        assert device_problem("cuda") is None
        assert "CUDA device(s)" in device_problem(f"cuda:{torch.cuda.device_count()}")
