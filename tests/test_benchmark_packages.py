"""A benchmark is one package (issue 25): the contract without TOFU's terms, and the layers around it.

- A benchmark written to the `Benchmark` contract takes no ``forget_split`` (a TOFU setting): its split methods
  take ``subset`` (and the ``data_settings`` it declares), and the planner, the data loading and ``sau-trainer
  eval`` call it that way.
- The shared code below the benchmarks (data handling, the metric code of `sau_trainer.evaluation`) imports no
  benchmark package: only the registry and the contract, which import none.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from sau_trainer.benchmarks import BENCHMARKS, MuseStyleBenchmark, get_benchmark
from sau_trainer.pipeline import validate

sys.path.insert(0, str(Path(__file__).parent))
from import_graph import Graph  # noqa: E402


@dataclasses.dataclass(frozen=True)
class NoForgetSplit(MuseStyleBenchmark):
    """The built-in MUSE-style data with split methods written to the contract: no forget_split anywhere."""

    def evaluation_splits(self, subset=None):
        return super().evaluation_splits(subset=subset)

    def train_splits(self, role, subset=None):
        return super().train_splits(role, subset=subset)

    def unlearning_splits(self, retain_split=None, subset=None):
        return super().unlearning_splits(retain_split=retain_split, subset=subset)


@pytest.fixture
def no_forget_split(monkeypatch):
    muse = get_benchmark("synthetic-muse")
    bench = NoForgetSplit("no-forget-split", "test", presets=muse.presets)
    monkeypatch.setitem(BENCHMARKS, bench.name, bench)
    return bench


def test_the_planner_and_the_data_loading_call_a_benchmark_without_forget_split(no_forget_split, tmp_path):
    from sau_trainer.pipeline.stages import plan, split_uses

    recipe = validate({"model": {"shape": "tiny"}, "data": {"benchmark": "no-forget-split", "preset": "tiny"},
                       "prune": {"method": ["magnitude"], "sparsity": [0.5]},
                       "unlearn": {"objective": ["ga"], "learning_rate": [1e-4]}})
    tasks = {t.name: t for t in plan(recipe)}
    unlearn = [t for t in tasks.values() if t.kind == "unlearn"]
    assert unlearn and {(t.settings["forget_split"], t.settings["retain_split"]) for t in unlearn} == {
        ("raw/forget", "raw/retain1")}
    assert tasks["models/retain"].settings["splits"] == ["raw/retain1", "raw/retain2"]
    recipe.data.data_dir = str(tmp_path)  # a local copy: the splits the stages read are listed one by one
    uses = split_uses(recipe)
    assert uses["verbmem/forget"] == "the evaluation"
    assert uses["privleak/holdout"].startswith("membership inference")
    assert {"raw/forget", "raw/retain1", "raw/retain2"} <= set(uses)


def test_the_eval_command_loads_the_splits_of_a_benchmark_without_forget_split(no_forget_split):
    from sau_trainer.evaluation.cli import _load_splits

    args = argparse.Namespace(benchmark="no-forget-split", forget_split="forget10", subset=None, data_dir=None,
                              preset="tiny", seed=0)
    splits = _load_splits(args, no_forget_split)
    assert set(splits) == set(no_forget_split.evaluation_splits())


def test_only_tofu_declares_the_forget_split():
    assert {name: b.data_settings for name, b in BENCHMARKS.items()} == {
        "synthetic": ("forget_split",), "tofu": ("forget_split",), "synthetic-muse": (), "muse": (),
        "synthetic-wmdp": (), "wmdp": ()}
    data = argparse.Namespace(forget_split="forget05", subset=None)
    assert get_benchmark("tofu").data_options(data) == {"forget_split": "forget05"}
    assert get_benchmark("muse").data_options(data) == {}


# Below the benchmarks: what each may import of them (the registry and the contract import no benchmark).
CONTRACT = ("sau_trainer.benchmarks.registry", "sau_trainer.benchmarks.base", "sau_trainer.benchmarks.report_spec",
            "sau_trainer.benchmarks.tofu.report")  # base's default ReportSpec
SHARED_EVALUATION = ("metrics", "mia", "results", "compat", "generation", "reference_rows")
# data/: the old paths of moved modules re-export them; the built-in generators stay unchanged (their source is in
# every generated benchmark's task hashes), and the WMDP one builds its questions with the WMDP prompt
ABOVE_DATA = ("benchmarks", "tofu", "muse", "muse_subsets", "wmdp", "synthetic_wmdp")


def test_the_shared_code_imports_no_benchmark_package():
    graph = Graph()
    lower = [f"sau_trainer.evaluation.{m}" for m in SHARED_EVALUATION] + [
        m for m in graph.files if m.startswith("sau_trainer.data.") and m.rsplit(".", 1)[1] not in ABOVE_DATA]
    up = sorted(f"{graph.path(a)} -> {graph.path(b)}" for a in lower for b in graph.edges[a]
                if b.startswith("sau_trainer.benchmarks") and b not in CONTRACT
                or a.startswith("sau_trainer.data.") and b.startswith("sau_trainer.evaluation"))
    assert not up, f"the shared code imports a benchmark (move the shared piece down, or the code up): {up}"
    for module in CONTRACT:
        assert all(not b.startswith("sau_trainer.benchmarks.") or b in CONTRACT for b in graph.edges[module]), module
