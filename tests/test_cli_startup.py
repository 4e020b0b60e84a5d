"""`sau-trainer --help` (and each subcommand's) starts without importing torch or transformers: on a busy
machine those imports made `--help` take 17-21 s. An import-time check, not a timing one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """\
import sys
from sau_trainer.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "datasets", "accelerate") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], [], ["prune", "--help"], ["eval", "--help"], ["run", "--help"],
                                  ["push", "--help"]], ids=" ".join)
def test_help_imports_neither_torch_nor_transformers(argv):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "usage: sau-trainer" in proc.stdout  # the help was printed
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY", proc.stdout[-500:]


def test_the_subcommand_help_still_lists_its_options():
    from sau_trainer.cli import build_parser

    for command, options in (("prune", ("--method", "--calibration", "magnitude", "wanda", "sparsegpt")),
                             ("eval", ("--benchmark", "--forget-split", "synthetic")),
                             ("run", ("--dry-run", "--tasks"))):
        parser = build_parser([command, "--help"])
        sub = next(a for a in parser._actions if a.dest == "command")
        text = sub.choices[command].format_help()
        for option in options:
            assert option in text, (command, option)
