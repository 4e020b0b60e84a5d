"""The benchmark registry: one entry per benchmark, read by the CLI, the recipe schema and the pipeline.

A benchmark brings everything an experiment needs from it:
- its **loader** (`Benchmark.load`): ``{split name: rows}``, from the Hub, a local directory in the
  Hub's layout, or a seeded generator;
- the **training rows** of the target and the retain model (`train_splits`, `training_rows`);
- the **forget and retain sets** for unlearning (`unlearning_rows`);
- its **evaluation** (`evaluate`), which returns ``{"summary", "per_example", ...}`` for ``results.json``,
  and what the report shows of it (`report`).

Two protocols exist so far: the TOFU protocol (question/answer rows; `tofu` and the built-in
`synthetic`) and the MUSE protocol (raw texts, verbatim and knowledge memorisation, privacy leakage;
`muse` and the built-in `synthetic-muse`). Adding a benchmark is one class (or instance) and one line
in `BENCHMARKS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERAL_SPLITS = ("real_authors_perturbed", "world_facts_perturbed")


@dataclass(frozen=True)
class ForgetMetric:
    """A forget metric the report compares runs on (`better`: which direction means more forgetting)."""

    key: str
    label: str
    short: str
    better: str  # "max" or "min"
    log: bool = False
    axis: str = ""  # the plot's axis label (default: the label and the direction)


@dataclass(frozen=True)
class ReportSpec:
    """What the report shows for a benchmark: table columns, the utility axis and two forget metrics."""

    columns: tuple[tuple[str, str], ...]
    utility: str
    utility_label: str
    forget: tuple[ForgetMetric, ForgetMetric]
    notes: tuple[str, ...] = ()
    definitions: tuple[tuple[str, str], ...] = ()  # (column label, what it measures and which direction is better)

    @property
    def curve_keys(self) -> tuple[str, ...]:
        keys = [self.utility] + [m.key for m in self.forget] + [k for _, k in self.columns]
        return tuple(dict.fromkeys(keys))


TOFU_REPORT = ReportSpec(
    columns=(("forget quality", "forget_quality"), ("FQ (pruned retain)", "forget_quality_pruned_retain"),
             ("model utility", "model_utility"), ("forget ROUGE", "forget_rouge"),
             ("forget prob.", "forget_probability"), ("extraction strength", "extraction_strength"),
             ("retain ROUGE", "retain_rouge")),
    utility="model_utility", utility_label="model utility",
    forget=(ForgetMetric("forget_quality", "forget quality", "FQ", "max", log=True,
                         axis="forget quality (KS p-value vs retain model, log; higher is better)"),
            ForgetMetric("forget_rouge", "forget ROUGE", "forget ROUGE", "min",
                         axis="forget ROUGE-L recall (lower is better)")),
    notes=("forget quality: KS-test p-value against the dense retain model; FQ (pruned retain): against "
           "the retain model pruned the same way",),
    definitions=(
        ("model utility", "what the model still knows and should: the harmonic mean of 9 numbers (answer "
         "probability, ROUGE-L recall and truth ratio on the retain set, the real-authors set and the world-facts "
         "set); any zero makes it zero. Higher is better; the comparisons' utility band (report.utility_band) is a "
         "range of fractions of each comparison's starting model's utility (the pruned model for SAU against "
         "plain on a sparse model)."),
        ("forget quality", "how much the unlearned model's answers to the forget questions look like a model that "
         "never saw them: the p-value of a KS test between its per-question truth ratios and the retain model's "
         "(trained without the forget set). Higher is better (1: indistinguishable); compared as log10. It is a "
         "distance to the retain model, so over-forgetting (answers further from the truth than the retain model's) "
         "lowers it too."),
        ("FQ (pruned retain)", "forget quality against the retain model pruned the same way (sparse rows only)."),
        ("forget ROUGE", "ROUGE-L recall of the greedy answers to the forget questions against the true answers: "
         "how much of the forgotten answers the model still says. Lower is more forgotten (the retain model's value "
         "is what never having learnt them gives)."),
        ("forget prob.", "length-normalised probability of the true forget answers. Lower is more forgotten."),
        ("extraction strength", "share of a forget answer the model completes by itself once given a prefix "
         "(1 - k/|y|, k the shortest prefix after which it predicts every remaining token). Lower is more "
         "forgotten."),
        ("retain ROUGE", "ROUGE-L recall on the retain questions: what must be kept. Higher is better."),
    ),
)

MUSE_REPORT = ReportSpec(
    columns=(("forget VerbMem ROUGE", "forget_verbmem_rouge"), ("forget KnowMem ROUGE", "forget_knowmem_rouge"),
             ("retain KnowMem ROUGE", "retain_knowmem_rouge"), ("privleak", "privleak"),
             ("privleak (pruned retain)", "privleak_pruned_retain"), ("MIA min-k AUC", "mia_min_k"),
             ("extraction strength", "extraction_strength"), ("exact mem.", "exact_memorization")),
    utility="retain_knowmem_rouge", utility_label="retain KnowMem ROUGE",
    forget=(ForgetMetric("forget_verbmem_rouge", "forget VerbMem ROUGE", "VerbMem", "min"),
            ForgetMetric("forget_knowmem_rouge", "forget KnowMem ROUGE", "KnowMem", "min")),
    notes=("VerbMem / KnowMem: ROUGE-L F1 of greedy continuations and answers (MUSE); privleak: "
           "100 x (AUC_retain - AUC) / (1 - AUC_retain) of the min-k (k = 0.4) attack, forget vs holdout, "
           "against the dense retain model (0: like the retain model, -100: the forget texts are plainly "
           "training data); privleak (pruned retain): against the retain model pruned the same way",),
    definitions=(
        ("forget VerbMem ROUGE", "ROUGE-L F1 of the greedy continuations of forget-text prefixes against the true "
         "continuations: verbatim memorisation. Lower is more forgotten."),
        ("forget KnowMem ROUGE", "ROUGE-L F1 of the answers to questions about the forget texts. Lower is more "
         "forgotten."),
        ("retain KnowMem ROUGE", "the same on the retain texts: the utility. Higher is better."),
        ("privleak", "membership leakage against the retain model (0: like the retain model; negative: the forget "
         "texts still look like training data). Closer to 0 is better."),
        ("MIA min-k AUC", "AUC of the min-k% attack telling forget texts from holdout texts (0.5: cannot)."),
        ("extraction strength", "share of a forget text the model completes by itself. Lower is more forgotten."),
        ("exact mem.", "share of forget tokens predicted exactly under teacher forcing. Lower is more forgotten."),
    ),
)


WMDP_REPORT = ReportSpec(
    columns=(("WMDP acc.", "wmdp_acc"), ("MMLU acc.", "mmlu_acc"), ("WMDP p(answer)", "wmdp_prob")),
    utility="mmlu_acc", utility_label="MMLU accuracy",
    forget=(ForgetMetric("wmdp_acc", "WMDP accuracy", "WMDP acc.", "min",
                         axis="WMDP accuracy (chance 0.25; lower is better)"),
            ForgetMetric("wmdp_prob", "WMDP answer probability", "WMDP p", "min",
                         axis="WMDP: probability of the right letter among A-D (lower is better)")),
    notes=("WMDP / MMLU: zero-shot multiple-choice accuracy, the log-likelihood of ' A' to ' D' after "
           "lm-evaluation-harness's prompt (chance 0.25); WMDP p(answer): the right letter's probability among "
           "the four",),
    definitions=(
        ("WMDP acc.", "accuracy on the hazardous-knowledge questions. Lower is more forgotten (chance: 0.25)."),
        ("MMLU acc.", "accuracy on general knowledge: the utility. Higher is better."),
        ("WMDP p(answer)", "probability of the right letter among the four. Lower is more forgotten."),
    ),
)


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark. Subclasses implement one protocol; instances fix the data source."""

    name: str
    help: str
    protocol: str = "tofu"
    subsets: tuple[str, ...] = ()
    default_subset: str | None = None
    presets: tuple[str, ...] = ()  # non-empty for generated benchmarks
    report: ReportSpec = field(default=TOFU_REPORT)

    @property
    def generated(self) -> bool:
        return bool(self.presets)

    # ------------------------------------------------------------------ data
    def load(self, splits: Iterable[str] | None = None, data_dir: str | Path | None = None, preset: str = "tiny",
             seed: int = 0, subset: str | None = None) -> dict[str, list[dict]]:
        raise NotImplementedError

    def generator_file(self) -> str | None:
        """The generator's source file (its digest identifies generated data in the pipeline's hashes)."""
        return None

    def check_options(self, subset: str | None = None, preset: str | None = None) -> list[str]:
        """Problems with a subset / preset choice (empty when fine)."""
        problems = []
        if subset is not None and subset not in self.subsets:
            problems.append(f"{self.name} has no subset {subset!r}" + (
                f"; choose one of {list(self.subsets)}" if self.subsets else " (it has no subsets)"))
        if preset is not None and self.generated and preset not in self.presets:
            problems.append(f"{self.name} has no preset {preset!r}; choose one of {list(self.presets)}")
        return problems

    def evaluation_splits(self, forget_split: str = "forget10", subset: str | None = None) -> tuple[str, ...]:
        raise NotImplementedError

    def train_splits(self, role: str, forget_split: str = "forget10", subset: str | None = None) -> list[str]:
        """Default training splits of the ``target`` or ``retain`` model (`subset`: where the names depend on it)."""
        raise NotImplementedError

    def training_rows(self, splits_data: Mapping[str, list[dict]], splits: Iterable[str]) -> list[dict]:
        raise NotImplementedError

    def unlearning_splits(self, forget_split: str = "forget10", retain_split: str | None = None,
                          subset: str | None = None) -> tuple[str, str]:
        raise NotImplementedError

    def unlearning_rows(self, splits_data: Mapping[str, list[dict]], split: str, tokenizer: Any = None,
                        max_length: int | None = None) -> list[dict]:
        raise NotImplementedError

    def calibration_texts(self, splits_data: Mapping[str, list[dict]], split: str, tokenizer: Any) -> list[str]:
        raise NotImplementedError

    def calibration_splits(self, split: str) -> list[str]:
        """The splits `calibration_texts` reads for `split` (what the pipeline must load for it)."""
        return [split]

    def tokenizer_texts(self, splits_data: Mapping[str, list[dict]]) -> list[str]:
        """Every string of the benchmark, for a tokenizer trained from scratch."""
        texts: list[str] = []
        for rows in splits_data.values():
            for r in rows:
                for v in r.values():
                    if isinstance(v, str):
                        texts.append(v)
                    elif isinstance(v, list | tuple):
                        texts += [x for x in v if isinstance(x, str)]
        return [t for t in texts if t]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: Any, tokenizer: Any, splits_data: Mapping[str, Any], *, forget_split: str = "forget10",
                 batch_size: int = 16, max_new_tokens: int = 200, max_length: int | None = None,
                 retain_results: Any = None, show_progress: bool = True, compat: str | None = None,
                 question_key: str = "question") -> dict[str, Any]:
        """The protocol's evaluation; `compat`: the metric definitions (`sau_trainer.evaluation.compat`)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------- TOFU protocol
@dataclass(frozen=True)
class TofuStyleBenchmark(Benchmark):
    """The TOFU protocol (SPEC section 5) on question/answer splits with TOFU's names and columns."""

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from . import tofu

        if self.generated:
            return tofu._load_synthetic(splits, data_dir, preset, seed)
        return tofu.load_tofu(splits, data_dir)

    def generator_file(self):
        if not self.generated:
            return None
        from . import synthetic

        return synthetic.__file__

    def evaluation_splits(self, forget_split="forget10", subset=None):
        from .tofu import evaluation_splits, holdout_split

        return (*evaluation_splits(forget_split), holdout_split(forget_split))

    def train_splits(self, role, forget_split="forget10", subset=None):
        base = ["full"] if role == "target" else [f"retain{100 - int(forget_split[-2:]):02d}"]
        return base + (list(GENERAL_SPLITS) if self.generated else [])

    def training_rows(self, splits_data, splits):
        return [{"question": r["question"], "answer": r["answer"]} for s in splits for r in _split(splits_data, s)]

    def unlearning_splits(self, forget_split="forget10", retain_split=None, subset=None):
        return forget_split, retain_split or f"retain{100 - int(forget_split[-2:]):02d}"

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from .alternates import attach_perturbed

        # with the perturbed answers of the same questions (forgetNN_perturbed, where loaded): AltPO's alternates
        return attach_perturbed(self.training_rows(splits_data, [split]), splits_data.get(f"{split}_perturbed"))

    def calibration_texts(self, splits_data, split, tokenizer):
        from .qa import format_prompt

        return [format_prompt(r["question"], tokenizer) + r["answer"] for r in _split(splits_data, split)]

    def tokenizer_texts(self, splits_data):
        texts = []
        for rows in splits_data.values():
            for r in rows:
                texts += [r.get("question", ""), r.get("answer", ""), *r.get("perturbed_answer", []),
                          r.get("paraphrased_answer", ""), r.get("paraphrased_question", "")]
        return [t for t in texts if t]

    def evaluate(self, model, tokenizer, splits_data, *, forget_split="forget10", batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, compat=None, question_key="question"):
        from ..evaluation.tofu import evaluate_tofu

        return evaluate_tofu(model, tokenizer, splits_data, forget_split=forget_split, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, max_length=max_length, retain_results=retain_results,
                             show_progress=show_progress, compat=compat, question_key=question_key)


# ----------------------------------------------------------------------------------------- MUSE protocol
@dataclass(frozen=True)
class MuseStyleBenchmark(Benchmark):
    """The MUSE protocol (METHODS.md section 3) on splits named ``<config>/<split>``.

    The target model trains on ``raw/forget`` + ``raw/retain1`` + ``raw/retain2``, the retain model on
    ``raw/retain1`` + ``raw/retain2``; unlearning forgets ``raw/forget`` and retains ``raw/retain1``
    (open-unlearning's setup), both joined and cut into chunks of the unlearning ``max_length``.
    The TOFU forget split setting and the evaluation's ``max_new_tokens`` do not apply (MUSE fixes its
    generation lengths: 128 tokens for VerbMem, 32 for KnowMem).
    """

    protocol: str = "muse"
    report: ReportSpec = field(default=MUSE_REPORT)

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from .muse import load_muse

        if not self.generated:
            return load_muse(splits, data_dir, subset or self.default_subset)
        from .muse import load_local_muse_split, parse_split
        from .synthetic_muse import generate_muse_benchmark

        if data_dir is not None:  # files written by write_muse_benchmark: read them like MUSE's
            names = list(splits) if splits is not None else list(generate_muse_benchmark(preset, seed))
            return {n: load_local_muse_split(data_dir, n) for n in names}
        bench = generate_muse_benchmark(preset, seed)
        names = list(splits) if splits is not None else list(bench)
        return _select_splits(self.name, bench, names, parse_split)

    def generator_file(self):
        if not self.generated:
            return None
        from . import synthetic_muse

        return synthetic_muse.__file__

    def evaluation_splits(self, forget_split="forget10", subset=None):
        from .muse import EVALUATION_SPLITS

        return EVALUATION_SPLITS

    def train_splits(self, role, forget_split="forget10", subset=None):
        return (["raw/forget"] if role == "target" else []) + ["raw/retain1", "raw/retain2"]

    def training_rows(self, splits_data, splits):
        return [{"text": r["text"]} for s in splits for r in _split(splits_data, s)]

    def unlearning_splits(self, forget_split="forget10", retain_split=None, subset=None):
        return "raw/forget", retain_split or "raw/retain1"

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from .muse import chunk_texts

        if tokenizer is None or max_length is None:
            raise ValueError(f"{self.name}: unlearning rows are token chunks; pass the tokenizer and max_length.")
        return chunk_texts([r["text"] for r in _split(splits_data, split)], tokenizer, max_length)

    def tokenizer_texts(self, splits_data):
        """The raw texts, each once: every other split repeats pieces of them, and counting a subject's text
        more often than another's would make its tokens shorter (a length bias in membership inference)."""
        raw = [r["text"] for name, rows in splits_data.items() if name.startswith("raw/") for r in rows]
        return list(dict.fromkeys(raw)) if raw else list(dict.fromkeys(super().tokenizer_texts(splits_data)))

    def calibration_splits(self, split):
        """``full`` (the TOFU name) means every text the target model was trained on."""
        return self.train_splits("target") if split == "full" else [split]

    def calibration_texts(self, splits_data, split, tokenizer):
        """Texts of `split` (see `calibration_splits`)."""
        return [r["text"] for s in self.calibration_splits(split) for r in _split(splits_data, s)]

    def evaluate(self, model, tokenizer, splits_data, *, forget_split="forget10", batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, max_rows=None, max_prompt_tokens=None,
                 compat=None, question_key="question"):
        from ..evaluation.muse import evaluate_muse

        _no_question_key(question_key, "MUSE")

        return evaluate_muse(model, tokenizer, splits_data, batch_size=batch_size, max_length=max_length,
                             retain_results=retain_results, show_progress=show_progress, max_rows=max_rows,
                             max_prompt_tokens=max_prompt_tokens, compat=compat)


# ----------------------------------------------------------------------------------------- WMDP protocol
@dataclass(frozen=True)
class WmdpStyleBenchmark(Benchmark):
    """WMDP with MMLU (METHODS.md section 4) on splits named ``<config>/<split>`` (`sau_trainer.data.wmdp`).

    The subset (``cyber``, the default, ``bio``, ``chem``) picks the question split ``wmdp-<subset>/test`` and
    the corpora: the target model trains on ``<subset>-forget-corpus/train`` + ``<subset>-retain-corpus/train``,
    the retain model on the retain corpus; unlearning forgets the forget corpus and retains on the retain
    corpus (open-unlearning's WMDP setup), both cut into chunks of the unlearning ``max_length``. ``chem`` has
    questions only (evaluation). The TOFU forget split and ``max_new_tokens`` do not apply.
    """

    protocol: str = "wmdp"
    report: ReportSpec = field(default=WMDP_REPORT)

    def _subset(self, subset):
        from .wmdp import resolve_subset

        return resolve_subset(subset or self.default_subset)

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from .wmdp import default_splits, load_local_wmdp_split, load_wmdp, parse_split

        subset = self._subset(subset)
        if not self.generated:
            return load_wmdp(splits, data_dir, subset)
        from .synthetic_wmdp import generate_wmdp_benchmark

        names = list(splits) if splits is not None else default_splits(subset)
        if data_dir is not None:  # files written by write_wmdp_benchmark (corpus lines are {"text": ...} objects)
            return {n: load_local_wmdp_split(data_dir, n, raw_jsonl_lines=False) for n in names}
        bench = generate_wmdp_benchmark(preset, seed)
        return _select_splits(self.name, bench, names, parse_split)

    def generator_file(self):
        if not self.generated:
            return None
        from . import synthetic_wmdp

        return synthetic_wmdp.__file__

    def evaluation_splits(self, forget_split="forget10", subset=None):
        from .wmdp import MMLU_SPLIT, question_split

        return (question_split(self._subset(subset)), MMLU_SPLIT)

    def _corpora(self, subset):
        from .wmdp import forget_split, retain_split

        subset = self._subset(subset)
        if subset == "chem":
            raise ValueError(f"{self.name}: the chem subset has questions only (no forget or retain corpus): "
                             "evaluate with it (sau-trainer eval --subset chem), unlearn with cyber or bio.")
        return forget_split(subset), retain_split(subset)

    def train_splits(self, role, forget_split="forget10", subset=None):
        forget, retain = self._corpora(subset)
        return ([forget] if role == "target" else []) + [retain]

    def training_rows(self, splits_data, splits):
        return [{"text": r["text"]} for s in splits for r in _split(splits_data, s)]

    def unlearning_splits(self, forget_split="forget10", retain_split=None, subset=None):
        forget, retain = self._corpora(subset)
        return forget, retain_split or retain

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from .muse import chunk_texts

        if tokenizer is None or max_length is None:
            raise ValueError(f"{self.name}: unlearning rows are token chunks; pass the tokenizer and max_length.")
        return chunk_texts([r["text"] for r in _split(splits_data, split)], tokenizer, max_length)

    def tokenizer_texts(self, splits_data):
        """The corpus texts (they hold the questions in the prompt format too), then any question not in them."""
        from ..evaluation.wmdp import build_prompt, subject_of
        from .wmdp import is_question_split

        texts = [r["text"] for name, rows in splits_data.items() if not is_question_split(name) for r in rows]
        texts += [build_prompt(r["question"], r["choices"], subject_of(name, r))
                  for name, rows in splits_data.items() if is_question_split(name) for r in rows]
        return list(dict.fromkeys(texts))

    def calibration_texts(self, splits_data, split, tokenizer):
        """Texts of `split` (question splits: their prompts); ``full`` (the TOFU name) means every corpus text
        in the data (what the target model trains on)."""
        from ..evaluation.wmdp import build_prompt, subject_of
        from .wmdp import is_question_split

        names = [n for n in splits_data if not is_question_split(n)] if split == "full" else [split]
        out = []
        for name in names:
            for r in _split(splits_data, name):
                out.append(build_prompt(r["question"], r["choices"], subject_of(name, r))
                           if is_question_split(name) else r["text"])
        return out

    def evaluate(self, model, tokenizer, splits_data, *, forget_split="forget10", batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, compat=None, question_key="question"):
        from ..evaluation.compat import resolve
        from ..evaluation.wmdp import evaluate_wmdp

        resolve(compat, "wmdp")  # no compat mode defines WMDP metrics: a clear error for any
        _no_question_key(question_key, "WMDP")

        return evaluate_wmdp(model, tokenizer, splits_data, batch_size=batch_size, max_length=max_length,
                             retain_results=retain_results, show_progress=show_progress)


def _no_question_key(question_key: str, protocol: str) -> None:
    if question_key != "question":
        raise ValueError(f"question_key={question_key!r} is for the TOFU protocol; {protocol} asks its own prompts.")


def _split(splits_data: Mapping[str, list[dict]], name: str) -> list[dict]:
    if name not in splits_data:
        raise KeyError(f"The benchmark has no split {name!r}; it has {sorted(splits_data)}.")
    return splits_data[name]


def _presets(module: str, attr: str) -> tuple[str, ...]:
    from importlib import import_module

    return tuple(getattr(import_module(module), attr))


# One line per benchmark.
BENCHMARKS: dict[str, Benchmark] = {
    "synthetic": TofuStyleBenchmark(
        "synthetic", "the built-in TOFU-style benchmark (seeded fictitious people; offline)",
        presets=_presets("sau_trainer.data.synthetic", "PRESETS")),
    "synthetic-muse": MuseStyleBenchmark(
        "synthetic-muse", "the built-in MUSE-style benchmark (seeded fictitious profiles; offline)",
        presets=_presets("sau_trainer.data.synthetic_muse", "MUSE_PRESETS")),
    "synthetic-wmdp": WmdpStyleBenchmark(
        "synthetic-wmdp", "the built-in WMDP-style benchmark (fictitious exploit kits and geography; offline)",
        subsets=("cyber",), default_subset="cyber",
        presets=_presets("sau_trainer.data.synthetic_wmdp", "WMDP_PRESETS")),
    "tofu": TofuStyleBenchmark("tofu", "TOFU (locuslab/TOFU on the Hub, or --data-dir with its split files)"),
    "muse": MuseStyleBenchmark(
        "muse", "MUSE (muse-bench/MUSE-News or -Books on the Hub, or --data-dir in the Hub's layout)",
        subsets=("news", "books"), default_subset="news"),
    "wmdp": WmdpStyleBenchmark(
        "wmdp", "WMDP with MMLU (cais/wmdp, cais/wmdp-corpora, hails/mmlu_no_train on the Hub, or --data-dir with "
        "wmdp/, mmlu/, wmdp-corpora/ in their layout; bio's forget corpus is gated: supply it)",
        subsets=("cyber", "bio", "chem"), default_subset="cyber"),
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`, with a clear error listing the others."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


def load_benchmark(name: str = "tofu", data_dir: str | Path | None = None, preset: str = "tiny", seed: int = 0,
                   splits: Iterable[str] | None = None, subset: str | None = None) -> dict[str, list[dict]]:
    """Splits of a registered benchmark. Generated ones (``synthetic``, ``synthetic-muse``) are made from
    (`preset`, `seed`) unless `data_dir` holds written files; the others read `data_dir` or the Hub
    (`subset`: ``news`` or ``books`` for ``muse``)."""
    bench = get_benchmark(name)
    problems = bench.check_options(subset=subset)
    if problems:
        raise ValueError("; ".join(problems) + ".")
    return bench.load(splits=splits, data_dir=data_dir, preset=preset, seed=seed, subset=subset)


__all__ = ["BENCHMARKS", "Benchmark", "ForgetMetric", "MuseStyleBenchmark", "ReportSpec", "TofuStyleBenchmark",
           "WmdpStyleBenchmark", "get_benchmark", "load_benchmark"]


def _select_splits(benchmark: str, bench: dict, names: list[str], parse_split) -> dict:
    """`names` of a generated benchmark, each checked by `parse_split`; an unknown name is an error listing the
    benchmark's splits."""
    for n in names:
        parse_split(n)
    unknown = [n for n in names if n not in bench]
    if unknown:
        raise ValueError(f"The {benchmark} benchmark has no split(s) {unknown}; it has {list(bench)}.")
    return {n: bench[n] for n in names}
