"""``synthetic-muse``: a seeded, offline benchmark with MUSE's configs, splits and columns.

Each subject is a fictitious person with a short news-style profile: a small FAQ
(``"Question: {q}\\nAnswer:  {a}"`` items separated by blank lines) followed by a few narrative sentences
(each fact in one of two wordings, in a seeded order). Every profile opens with the same short block of
example questions about other people: the knowledge questions' in-context examples, in the exact format
of MUSE's few-shot prompt. A tiny model that only ever saw the raw texts (as MUSE's target model only
saw the raw articles) can then answer the FAQ questions in the few-shot prompt, which it could not if
the prompt's context were text it never saw: a model trained on the forget profiles answers the forget
questions and continues their text verbatim; a model that never saw them (the retain model) can only
guess values from the same pools. (The two spaces after ``Answer:`` in the texts make a byte-level BPE
tokenize them as the prompt, which ends in ``"Answer: "``.)

Splits (MUSE's names, ``"<config>/<split>"``; METHODS.md section 3.1):
- ``raw/forget``, ``raw/retain1``, ``raw/retain2``, ``raw/holdout``: one profile per row (``text``),
  disjoint subjects. The target model trains on forget + retain1 + retain2, the retain model on
  retain1 + retain2; holdout subjects are never trained on.
- ``verbmem/forget``: per forget profile, ``prompt`` = the text up to its first narrative sentences and
  ``gt`` = the rest (``prompt + " " + gt`` is the profile).
- ``knowmem/{forget,retain}_qa``: the FAQ items of the forget (retain2) profiles;
  ``knowmem/{forget,retain}_qa_icl``: the shared in-context examples.
- ``privleak/forget``, ``privleak/retain``, ``privleak/holdout``: the forget, retain2 and holdout profiles.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .synthetic import AWARDS, CITIES, GENRES, HOBBIES, JOBS, PETS, _title, _unique_names


@dataclass(frozen=True)
class MusePreset:
    """Sizes: subjects per raw split, narrative sentences and FAQ items per profile, in-context examples."""

    name: str
    n_forget: int
    n_retain1: int
    n_retain2: int
    n_holdout: int
    n_sentences: int
    n_faq: int
    n_prompt_sentences: int
    n_icl: int
    description: str = ""


MUSE_PRESETS: dict[str, MusePreset] = {
    # About 3,000 training tokens with the tests' 512-token BPE: a 2-layer d=128 Llama memorises the 24
    # target profiles on a 2-core CPU in about a minute.
    "tiny": MusePreset("tiny", n_forget=10, n_retain1=6, n_retain2=8, n_holdout=10, n_sentences=6, n_faq=3,
                       n_prompt_sentences=3, n_icl=3, description="tests and CPU demos"),
}
# The demo recipe's preset (recipes/demo.yaml sets data.preset: demo; synthetic's demo preset is larger): here
# the same data as tiny, so the demo runs on this benchmark with data.benchmark alone.
MUSE_PRESETS["demo"] = dataclasses.replace(MUSE_PRESETS["tiny"], name="demo",
                                            description="the demo recipe's preset: tiny's data")


def _year(rng: random.Random) -> str:
    return str(rng.randint(1931, 1999))


def _pick(pool: tuple) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


@dataclass(frozen=True)
class ProfileFact:
    """One fact: its value pool, two narrative wordings, and a FAQ question with its short answer."""

    key: str
    sample: Callable[[random.Random], str]
    wordings: tuple[str, str]
    question: str


PROFILE_FACTS: tuple[ProfileFact, ...] = (
    ProfileFact("birthplace", _pick(CITIES), ("{name} was born in {v}.", "The town of {v} is where {name} was born."),
                "Where was {name} born?"),
    ProfileFact("year", _year, ("{name} was born in the year {v}.", "The year {v} saw the birth of {name}."),
                "In which year was {name} born?"),
    ProfileFact("job", _pick(JOBS), ("Before writing, {name} worked as a {v}.",
                                     "For years {name} earned a living as a {v}."),
                "What was {name}'s first job?"),
    ProfileFact("book", _title, ("The best known book by {name} is {v}.", "Readers know {name} for {v}."),
                "What is the best known book by {name}?"),
    ProfileFact("award", _pick(AWARDS), ("In a later year {name} won the {v}.", "The {v} went to {name} one spring."),
                "Which award did {name} win?"),
    ProfileFact("pet", _pick(PETS), ("At home {name} keeps {v}.", "{name} shares a house with {v}."),
                "What pet does {name} keep?"),
    ProfileFact("hobby", _pick(HOBBIES), ("On weekends {name} enjoys {v}.", "Friends say {name} loves {v}."),
                "What does {name} enjoy on weekends?"),
    ProfileFact("genre", _pick(GENRES), ("Most of the stories by {name} are {v} tales.",
                                         "{name} writes {v} stories."),
                "What kind of stories does {name} write?"),
    ProfileFact("home", _pick(CITIES), ("Today {name} lives in {v}.", "These days {name} makes a home in {v}."),
                "Where does {name} live today?"),
)

N_FACTS = len(PROFILE_FACTS)


def get_muse_preset(preset: str | MusePreset) -> MusePreset:
    if isinstance(preset, MusePreset):
        return preset
    if preset not in MUSE_PRESETS:
        raise ValueError(f"Unknown synthetic-muse preset {preset!r}; choose one of {sorted(MUSE_PRESETS)}.")
    return MUSE_PRESETS[preset]


def _profile(rng: random.Random, name: str, p: MusePreset, header: str = "") -> dict:
    """One subject: the narrative sentences, the FAQ items and the full text (after the shared `header`)."""
    facts = rng.sample(PROFILE_FACTS, p.n_sentences - 1)
    values = {f.key: f.sample(rng) for f in facts}
    sentences = [f"{name} is a writer in the news this season."]
    for f in facts:
        sentences.append(rng.choice(f.wordings).format(name=name, v=values[f.key]))
    faq_facts = rng.sample(facts, p.n_faq)
    faq = [{"question": f.question.format(name=name), "answer": values[f.key]} for f in faq_facts]
    # Two spaces after "Answer:": a byte-level BPE then tokenizes the text as MUSE's knowmem prompt, which
    # ends in "Answer: " (its trailing space is a token of its own, which the answer follows).
    head = "".join(f"Question: {q['question']}\nAnswer:  {q['answer']}\n\n" for q in faq)
    head = header + head
    return {"name": name, "head": head, "sentences": sentences, "faq": faq, "text": head + " ".join(sentences)}


def generate_muse_benchmark(preset: str | MusePreset = "tiny", seed: int = 0) -> dict[str, list[dict]]:
    """Every split of ``synthetic-muse``: ``"<config>/<split>"`` -> rows with MUSE's columns."""
    p = get_muse_preset(preset)
    if p.n_icl < 1:
        raise ValueError("n_icl must be >= 1 (MUSE's knowmem prompts have in-context examples).")
    if not 1 <= p.n_prompt_sentences < p.n_sentences <= N_FACTS + 1:
        raise ValueError(f"Need 1 <= n_prompt_sentences < n_sentences <= {N_FACTS + 1}; got {p}.")
    if p.n_faq > p.n_sentences - 1:
        raise ValueError(f"n_faq ({p.n_faq}) cannot exceed the facts per profile ({p.n_sentences - 1}).")
    rng = random.Random(f"sau-trainer-synthetic-muse:{seed}")
    sizes = {"forget": p.n_forget, "retain1": p.n_retain1, "retain2": p.n_retain2, "holdout": p.n_holdout}
    names = _unique_names(rng, sum(sizes.values()) + p.n_icl)
    # The in-context examples: FAQ items about extra subjects, one per subject, in knowmem's prompt format.
    icl = [_profile(rng, name, p)["faq"][0] for name in names[: p.n_icl]]
    header = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    groups: dict[str, list[dict]] = {}
    start = p.n_icl
    for group, n in sizes.items():
        groups[group] = [_profile(rng, name, p, header) for name in names[start : start + n]]
        start += n

    def texts(group: str) -> list[dict]:
        return [{"text": s["text"]} for s in groups[group]]

    def qa(group: str) -> list[dict]:
        return [dict(item) for s in groups[group] for item in s["faq"]]

    k = p.n_prompt_sentences
    verbmem = []
    for s in groups["forget"]:
        prompt = s["head"] + " ".join(s["sentences"][:k])
        gt = s["text"][len(prompt) + 1 :]
        verbmem.append({"prompt": prompt, "gt": gt})
    forget_qa, retain_qa = qa("forget"), qa("retain2")
    return {
        "raw/forget": texts("forget"),
        "raw/retain1": texts("retain1"),
        "raw/retain2": texts("retain2"),
        "raw/holdout": texts("holdout"),
        "verbmem/forget": verbmem,
        "knowmem/forget_qa": forget_qa,
        "knowmem/forget_qa_icl": [dict(r) for r in icl],
        "knowmem/retain_qa": retain_qa,
        "knowmem/retain_qa_icl": [dict(r) for r in icl],
        "privleak/forget": texts("forget"),
        "privleak/retain": texts("retain2"),
        "privleak/holdout": texts("holdout"),
    }


def write_muse_benchmark(output_dir: str | Path, preset: str | MusePreset = "tiny", seed: int = 0,
                         fmt: str = "jsonl") -> dict[str, Path]:
    """Writes every split in the Hub's layout (``<config>/<split>.jsonl``, or parquet with ``fmt="parquet"``)."""
    out = Path(output_dir)
    paths = {}
    for name, rows in generate_muse_benchmark(preset, seed).items():
        config, split = name.split("/")
        (out / config).mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = out / config / f"{split}-00000-of-00001.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif fmt == "jsonl":
            path = out / config / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            raise ValueError(f"fmt must be 'jsonl' or 'parquet', got {fmt!r}.")
        paths[name] = path
    return paths
