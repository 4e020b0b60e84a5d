"""``sau-trainer eval --plugin FILE``: the file is imported before ``--benchmark`` is checked, so a plugin's
benchmark is a valid name (as ``prune --plugin`` does for pruners and a recipe's ``plugins:`` for both)."""

from __future__ import annotations

import textwrap

from sau_trainer.benchmarks.registry import BENCHMARKS
from sau_trainer.cli import main as cli_main

PLUGIN = """\
from sau_trainer import register_benchmark
from sau_trainer.data.benchmarks import TofuStyleBenchmark

register_benchmark(TofuStyleBenchmark("eval-plugin-bench", "TOFU's protocol, registered by a plugin"))
"""


def test_a_plugins_benchmark_is_a_valid_benchmark_name(tmp_path, capsys):
    argv = ["eval", "--model", str(tmp_path / "no-model"), "--benchmark", "eval-plugin-bench",
            "--output-dir", str(tmp_path / "out")]
    try:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "--benchmark 'eval-plugin-bench' is not a registered benchmark" in err and "--plugin" in err
        assert len(err.strip().splitlines()) == 1
        plugin = tmp_path / "bench_plugin.py"
        plugin.write_text(textwrap.dedent(PLUGIN))
        assert cli_main([*argv, "--plugin", str(plugin)]) == 2  # the model is missing: the only problem left
        err = capsys.readouterr().err
        assert "not a registered benchmark" not in err and "no-model: no such directory" in err
        assert "eval-plugin-bench" in BENCHMARKS
    finally:
        BENCHMARKS.pop("eval-plugin-bench", None)


def test_a_misspelt_benchmark_gets_the_closest_name(tmp_path, capsys):
    assert cli_main(["eval", "--model", str(tmp_path), "--benchmark", "synthetc", "--output-dir",
                     str(tmp_path / "out")]) == 2
    assert "did you mean 'synthetic'?" in capsys.readouterr().err
