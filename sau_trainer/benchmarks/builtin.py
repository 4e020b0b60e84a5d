"""The built-in benchmarks, one line each, added to the registry when `sau_trainer.benchmarks` is imported.

The generators of the built-in benchmarks stay in `sau_trainer.data` (``synthetic.py``, ``synthetic_muse.py``,
``synthetic_wmdp.py``), unchanged: the digest of a generator's source identifies its data in every cached task's
hash, so moving or editing it would recompute every run on a generated benchmark.
"""

from __future__ import annotations

from ..data.synthetic import PRESETS
from ..data.synthetic_muse import MUSE_PRESETS
from ..data.synthetic_wmdp import WMDP_PRESETS
from .muse.benchmark import MuseStyleBenchmark
from .registry import BENCHMARKS
from .tofu.benchmark import TofuStyleBenchmark
from .wmdp.benchmark import WmdpStyleBenchmark

BUILTIN = (
    TofuStyleBenchmark("synthetic", "the built-in TOFU-style benchmark (seeded fictitious people; offline)",
                       presets=tuple(PRESETS)),
    MuseStyleBenchmark("synthetic-muse", "the built-in MUSE-style benchmark (seeded fictitious profiles; offline)",
                       presets=tuple(MUSE_PRESETS)),
    WmdpStyleBenchmark("synthetic-wmdp",
                       "the built-in WMDP-style benchmark (fictitious exploit kits and geography; offline)",
                       subsets=("cyber",), default_subset="cyber", presets=tuple(WMDP_PRESETS)),
    TofuStyleBenchmark("tofu", "TOFU (locuslab/TOFU on the Hub, or --data-dir with its split files)"),
    MuseStyleBenchmark("muse", "MUSE (muse-bench/MUSE-News or -Books on the Hub, or --data-dir in the Hub's layout)",
                       subsets=("news", "books"), default_subset="news"),
    WmdpStyleBenchmark("wmdp", "WMDP with MMLU (cais/wmdp, cais/wmdp-corpora, hails/mmlu_no_train on the Hub, or "
                       "--data-dir with wmdp/, mmlu/, wmdp-corpora/ in their layout; bio's forget corpus is gated: "
                       "supply it)", subsets=("cyber", "bio", "chem"), default_subset="cyber"),
)

for _bench in BUILTIN:
    BENCHMARKS.setdefault(_bench.name, _bench)

__all__ = ["BUILTIN"]
