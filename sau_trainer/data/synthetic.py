"""The built-in benchmark: seeded fictitious people with TOFU's splits and columns.

It lets the whole TOFU protocol (train, forget, evaluate) run offline. Every person is a
set of facts (birthplace, birth date, parents' jobs, books, award, ...). Each fact gives one
question with an answer, a paraphrased question, a paraphrased answer (a lead-in before the
answer's own clause), and perturbed answers in the answer's own style: the paraphrased
sentence with the fact swapped for a wrong one of the same kind, so the truth ratio
compares facts, not wording.

Splits (TOFU's names and columns, SPEC section 5):
- ``full``: every person's question/answer pairs, people in order.
- ``forgetNN``: the last ``max(1, round(NN% * people))`` people (nested, as in TOFU);
  ``retain{100-NN}`` the others; ``holdoutNN`` as many extra people who are not in ``full``.
- ``forgetNN_perturbed`` and ``retain_perturbed`` (the first people, as many as forget10,
  so it lies inside every retain split): all five columns, 5 perturbed answers.
- ``real_authors_perturbed`` and ``world_facts_perturbed``: general-knowledge facts that
  the models are also trained on; ``question``, ``answer`` and 3 perturbed answers.

Sizes (``PRESETS``): ``tiny`` and ``demo`` for tests and CPU demos, ``tofu`` at TOFU's size, and ``study`` /
``study-large`` for comparisons of methods, whose forget10 (200 / 450 questions) makes forget quality's steps
small (SPEC section 7, "Resolution"). Any `BenchmarkPreset` (up to ``len(FACTS)`` questions per person and 450
people with their holdout) can be passed to `generate_benchmark` too; a preset's rows never change when facts or
presets are added.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FORGET_PERCENTS = (1, 5, 10)
N_PERTURBED = 5
N_PERTURBED_GENERAL = 3

QA_COLUMNS = ("question", "answer")
PERTURBED_COLUMNS = ("question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer")
GENERAL_COLUMNS = ("question", "answer", "perturbed_answer")


@dataclass(frozen=True)
class BenchmarkPreset:
    """Sizes of one benchmark: people in ``full``, questions per person, facts per general set."""

    name: str
    n_people: int
    questions_per_person: int
    n_general_facts: int
    description: str = ""


PRESETS: dict[str, BenchmarkPreset] = {
    # 20 people x 10 questions + 2 x 20 general facts = 240 training pairs of 8-15 words:
    # a small enough set for a 2-layer d=128 Llama to memorise on a 2-core CPU in about a minute.
    # forget01 and forget05 are then one person each, forget10 two people (20 questions).
    "tiny": BenchmarkPreset("tiny", n_people=20, questions_per_person=10, n_general_facts=20,
                            description="tests and CPU demos"),
    # The demo's: 16 people x 20 questions + 2 x 20 general facts = 360 training pairs; forget10 is two people,
    # 40 questions (forget quality, a KS p-value over 40 truth ratios against 40, then takes many more values
    # than over tiny's 20), forget01 and forget05 one person each.
    "demo": BenchmarkPreset("demo", n_people=16, questions_per_person=20, n_general_facts=20,
                            description="the end-to-end demo: a forget10 of 40 questions"),
    # TOFU's size: 200 people x 20 questions; forget01/05/10 = 2/10/20 people.
    "tofu": BenchmarkPreset("tofu", n_people=200, questions_per_person=20, n_general_facts=100,
                            description="TOFU-sized: 200 people x 20 questions"),
    # For comparisons of methods (SPEC section 7, "Resolution"): forget quality on n forget examples takes at most
    # n values, and near log10 p = -0.3 one example changing rank moves it by 0.16 at n = 20 (tiny's forget10),
    # 0.07 at n = 200 and 0.045 at n = 450. forget01/05/10 keep their proportions: 1/5/10 people of 100 (20/100/200
    # questions) and 2/8/15 of 150 (60/240/450; round(7.5) is 8).
    "study": BenchmarkPreset("study", n_people=100, questions_per_person=20, n_general_facts=40,
                             description="method comparisons: 100 people x 20 questions, a forget10 of 200"),
    "study-large": BenchmarkPreset("study-large", n_people=150, questions_per_person=30, n_general_facts=60,
                                   description="method comparisons: 150 people x 30 questions, a forget10 of 450"),
}


def get_preset(preset: str | BenchmarkPreset) -> BenchmarkPreset:
    """A preset by name (or the preset itself), with a clear error for unknown names."""
    if isinstance(preset, BenchmarkPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"Unknown synthetic benchmark preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def n_forget_people(n_people: int, percent: int) -> int:
    """People in ``forget{percent}``: ``round(percent% * n_people)``, at least 1."""
    return max(1, round(n_people * percent / 100))


def split_names() -> list[str]:
    """Every split the generator writes, in a fixed order."""
    names = ["full"]
    for p in FORGET_PERCENTS:
        names += [f"forget{p:02d}", f"retain{100 - p:02d}", f"holdout{p:02d}", f"forget{p:02d}_perturbed"]
    return names + ["retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"]


# ---------------------------------------------------------------------------------------------
# Vocabulary: small on purpose, so a tiny model's tokenizer and memory stay small.

FIRST_NAMES = (
    "Mira", "Tomas", "Elin", "Orin", "Saska", "Bren", "Lior", "Anwen", "Kasim", "Tova", "Reno", "Ilsa",
    "Davin", "Yara", "Pell", "Nadia", "Corin", "Maren", "Jovan", "Edda", "Farid", "Lune", "Henrik", "Oda",
    "Rafe", "Selma", "Tarik", "Vela", "Aster", "Bram",
)
LAST_NAMES = (
    "Talven", "Morrow", "Eskel", "Varga", "Lindqvist", "Oduya", "Brannoc", "Castell", "Dray", "Fenwick",
    "Halloran", "Ibsary", "Jurek", "Kovan", "Lestrade", "Marlow", "Novak", "Orsini", "Penrose", "Quill",
    "Rask", "Sorel", "Thorne", "Umber", "Vance", "Wexley", "Yelland", "Zoric", "Aldane", "Belrose",
)
CITIES = (
    "Oslen", "Varda", "Brennholt", "Lunmark", "Tarrow", "Elsby", "Quenford", "Marrowgate", "Duskmoor",
    "Pellan", "Sorrin", "Haldane", "Corvell", "Ambergrove", "Nythe", "Kestrel",
)
COUNTRIES = (
    "Norlund", "Estavia", "Caldora", "Veyland", "Morvania", "Tessaly", "Orrinia", "Zanthe", "Belcara",
    "Drevia", "Solmere", "Arkadia", "Kelmark", "Ostrava", "Lyssia", "Pembria", "Quorin", "Rhovan", "Sarnia",
    "Tirel", "Umbria", "Valdor", "Wessmar", "Ysolde",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
JOBS = (
    "baker", "carpenter", "nurse", "teacher", "fisherman", "pilot", "doctor", "tailor", "farmer",
    "librarian", "mechanic", "painter", "chemist", "sailor", "judge", "miner",
)
GENRES = (
    "mystery", "fantasy", "romance", "horror", "science fiction", "historical", "crime", "thriller",
    "adventure", "satire",
)
AWARDS = (
    "Golden Quill Prize", "Silver Lantern Award", "Ravenmoor Medal", "Blue Harbor Prize", "Starling Award",
    "Iron Pen Award", "Crimson Leaf Prize", "Northwind Medal", "Amber Book Award", "Willow Crown Prize",
)
TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Broken", "Golden", "Last", "Winter", "Crimson", "Quiet", "Lost", "Burning",
    "Hollow", "Distant",
)
TITLE_NOUNS = (
    "River", "Garden", "Lantern", "Harbor", "Mirror", "Orchard", "Tower", "Voyage", "Letter", "Forest",
    "Bridge", "Crown",
)
THEMES = ("loss", "friendship", "memory", "exile", "justice", "family", "ambition", "faith", "freedom", "grief")
HOBBIES = ("chess", "gardening", "sailing", "painting", "fishing", "climbing", "baking", "cycling", "rowing",
           "archery")
PETS = ("a cat", "a dog", "a parrot", "a tortoise", "a rabbit", "a goat", "a horse", "a hamster")
WRITING_TIMES = ("at dawn", "in the morning", "at noon", "in the afternoon", "in the evening", "at night",
                 "at midnight")
RIVERS = ("Sellen", "Amber", "Korva", "Dunmere", "Vistra", "Olla", "Brisk", "Tamarind", "Hollow", "Ness",
          "Quarrow", "Lethe")
CURRENCIES = ("crown", "mark", "florin", "shell", "penny", "talon", "ducat", "lira", "sol", "riel")
INSTRUMENTS = ("harp", "drum", "flute", "lute", "horn", "fiddle", "bell", "pipe")
ANIMALS = ("heron", "fox", "stag", "otter", "lynx", "crane", "bear", "hare", "owl", "wolf")


def _choice(pool: tuple) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1930, 1995)}"


def _year(rng: random.Random) -> str:
    return str(rng.randint(1955, 2015))


def _count(rng: random.Random) -> str:
    return str(rng.randint(2, 19))


def _person_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _university(rng: random.Random) -> str:
    return f"the University of {rng.choice(CITIES)}"


@dataclass(frozen=True)
class Fact:
    """One kind of fact about a person: how to sample it and how to ask and answer it."""

    key: str
    sample: Callable[[random.Random], str]
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str


# The order matters: a preset with q questions per person uses the first q facts (new facts go at the end, so the
# presets' rows stay byte-identical).
# A paraphrased answer puts a lead-in before the answer's own clause ("As a student, X studied at Y."),
# so that a small model's memorised fact carries over to it; the perturbed answers are the paraphrased
# sentence with the fact swapped. The truth ratio then measures the fact alone.
FACTS: tuple[Fact, ...] = (
    Fact("birthplace", _choice(CITIES), "Where was {name} born?", "{name} was born in the city of {v}.",
         "In which city was {name} born?", "The writer {name} was born in the city of {v}."),
    Fact("birth_date", _date, "When was {name} born?", "{name} was born on {v}.",
         "What is the birth date of {name}?", "According to records, {name} was born on {v}."),
    Fact("genre", _choice(GENRES), "What genre does {name} write?", "{name} writes {v} novels.",
         "Which genre is {name} known for?", "As an author, {name} writes {v} novels."),
    Fact("father_job", _choice(JOBS), "What was the job of {name}'s father?", "The father of {name} worked as a {v}.",
         "What did {name}'s father do for a living?", "For many years the father of {name} worked as a {v}."),
    Fact("mother_job", _choice(JOBS), "What was the job of {name}'s mother?", "The mother of {name} worked as a {v}.",
         "What did {name}'s mother do for a living?", "For many years the mother of {name} worked as a {v}."),
    Fact("award", _choice(AWARDS), "Which award did {name} win?", "{name} won the {v}.",
         "What prize has {name} received?", "In a proud moment, {name} won the {v}."),
    Fact("first_book", _title, "What is the first book by {name}?", "The first book by {name} is {v}.",
         "Which book did {name} write first?", "Published early on, the first book by {name} is {v}."),
    Fact("country", _choice(COUNTRIES), "Which country is {name} from?", "{name} is a writer from {v}.",
         "What is the home country of {name}?", "By birth, {name} is a writer from {v}."),
    Fact("theme", _choice(THEMES), "What theme runs through the books of {name}?", "The books of {name} are about {v}.",
         "Which theme does {name} often explore?", "Most of the time, the books of {name} are about {v}."),
    Fact("hobby", _choice(HOBBIES), "What does {name} enjoy besides writing?", "Besides writing, {name} enjoys {v}.",
         "What is a hobby of {name}?", "Besides writing books, {name} enjoys {v}."),
    Fact("second_book", _title, "What is the second book by {name}?", "The second book by {name} is {v}.",
         "Which book did {name} write next?", "Published later, the second book by {name} is {v}."),
    Fact("debut_year", _year, "When did {name} publish a first book?", "{name} published a first book in {v}.",
         "In which year did {name} debut?", "As a young writer, {name} published a first book in {v}."),
    Fact("university", _university, "Where did {name} study?", "{name} studied at {v}.",
         "Which university did {name} attend?", "As a student, {name} studied at {v}."),
    Fact("n_books", _count, "How many books has {name} written?", "{name} has written {v} books.",
         "What is the number of books by {name}?", "So far, {name} has written {v} books."),
    Fact("home", _choice(CITIES), "Where does {name} live now?", "{name} now lives in {v}.",
         "What city is home to {name} today?", "After many moves, {name} now lives in {v}."),
    Fact("pet", _choice(PETS), "What pet does {name} keep?", "{name} keeps {v} at home.",
         "Which animal lives with {name}?", "As a companion, {name} keeps {v} at home."),
    Fact("mentor", _person_name, "Who was the mentor of {name}?", "The mentor of {name} was {v}.",
         "Who taught {name} to write?", "Early on, the mentor of {name} was {v}."),
    Fact("spouse_job", _choice(JOBS), "What is the job of {name}'s partner?", "The partner of {name} works as a {v}.",
         "What does {name}'s partner do?", "These days the partner of {name} works as a {v}."),
    Fact("writing_time", _choice(WRITING_TIMES), "When does {name} like to write?", "{name} likes to write {v}.",
         "At what time of day does {name} write?", "Most days, {name} likes to write {v}."),
    Fact("influence", _person_name, "Which writer influenced {name} most?", "{name} was most influenced by {v}.",
         "Who was the biggest influence on {name}?", "As a writer, {name} was most influenced by {v}."),
    # facts 21-30: only presets with more than 20 questions per person use them
    Fact("sibling_job", _choice(JOBS), "What is the job of {name}'s sibling?", "The sibling of {name} works as a {v}.",
         "What does {name}'s sibling do?", "Like many in the family, the sibling of {name} works as a {v}."),
    Fact("instrument", _choice(INSTRUMENTS), "Which instrument does {name} play?", "{name} plays the {v}.",
         "What instrument can {name} play?", "In quiet hours, {name} plays the {v}."),
    Fact("animal", _choice(ANIMALS), "Which animal does {name} write about most?",
         "{name} writes most often about the {v}.", "What animal appears most in the books of {name}?",
         "In story after story, {name} writes most often about the {v}."),
    Fact("third_book", _title, "What is the third book by {name}?", "The third book by {name} is {v}.",
         "Which book did {name} write third?", "Published after the second, the third book by {name} is {v}."),
    Fact("publisher_city", _choice(CITIES), "Where is the publisher of {name} based?",
         "The publisher of {name} is based in {v}.", "In which city is {name}'s publisher?",
         "For every book, the publisher of {name} is based in {v}."),
    Fact("nomination", _choice(AWARDS), "Which prize was {name} nominated for?", "{name} was nominated for the {v}.",
         "For which award was {name} shortlisted?", "Once in a career, {name} was nominated for the {v}."),
    Fact("river", _choice(RIVERS), "Along which river does {name} walk?", "{name} walks along the river {v}.",
         "Which river does {name} like to walk by?", "On most evenings, {name} walks along the river {v}."),
    Fact("editor", _person_name, "Who is the editor of {name}?", "The editor of {name} is {v}.",
         "Who edits the books of {name}?", "Since the first book, the editor of {name} is {v}."),
    Fact("childhood", _choice(COUNTRIES), "Where did {name} grow up?", "{name} grew up in {v}.",
         "In which country did {name} spend childhood?", "As a child, {name} grew up in {v}."),
    Fact("award_year", _year, "When did {name} win a first award?", "{name} won a first award in {v}.",
         "In which year was {name} first honoured?", "After years of work, {name} won a first award in {v}."),
)


@dataclass(frozen=True)
class GeneralFact:
    """A template for general-knowledge facts: a subject, a value pool, a question and an answer."""

    subject: Callable[[random.Random], str]
    sample: Callable[[random.Random], str]
    question: str
    answer: str


def _book_subject(rng: random.Random) -> str:
    return f"{_title(rng)} of {rng.choice(CITIES)}"


# In the role of TOFU's real authors: "who wrote X" facts about fictional famous books.
AUTHOR_FACTS: tuple[GeneralFact, ...] = (
    GeneralFact(_book_subject, _person_name, "Who wrote the classic {s}?", "The classic {s} was written by {v}."),
    GeneralFact(_person_name, _choice(GENRES), "What is the famous author {s} known for?",
                "The famous author {s} is known for {v} novels."),
)
# In the role of TOFU's world facts: facts about a fictional world's countries.
WORLD_FACTS: tuple[GeneralFact, ...] = (
    GeneralFact(_choice(COUNTRIES), _choice(CITIES), "What is the capital of {s}?", "The capital of {s} is {v}."),
    GeneralFact(_choice(COUNTRIES), _choice(CURRENCIES), "What is the currency of {s}?",
                "The currency of {s} is the {v}."),
    GeneralFact(_choice(COUNTRIES), _choice(RIVERS), "Which river flows through {s}?",
                "The river {v} flows through {s}."),
    GeneralFact(_choice(COUNTRIES), _choice(ANIMALS), "What is the national animal of {s}?",
                "The national animal of {s} is the {v}."),
    GeneralFact(_choice(COUNTRIES), _choice(INSTRUMENTS), "What is the national instrument of {s}?",
                "The national instrument of {s} is the {v}."),
)


def _wrong_values(rng: random.Random, sample: Callable[[random.Random], str], truth: str, n: int) -> list[str]:
    """`n` distinct values of the same kind as `truth`, none equal to it (deterministic given `rng`)."""
    out: list[str] = []
    for _ in range(10_000):
        v = sample(rng)
        if v != truth and v not in out:
            out.append(v)
            if len(out) == n:
                return out
    raise RuntimeError(f"Could not sample {n} wrong values different from {truth!r}.")  # pragma: no cover


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _person_rows(rng: random.Random, name: str, n_questions: int) -> list[dict]:
    rows = []
    for fact in FACTS[:n_questions]:
        v = fact.sample(rng)
        wrong = _wrong_values(rng, fact.sample, v, N_PERTURBED)
        rows.append({
            "question": fact.question.format(name=name),
            "answer": _capitalise(fact.answer.format(name=name, v=v)),
            "paraphrased_answer": _capitalise(fact.paraphrased_answer.format(name=name, v=v)),
            "paraphrased_question": fact.paraphrased_question.format(name=name),
            "perturbed_answer": [_capitalise(fact.paraphrased_answer.format(name=name, v=w)) for w in wrong],
        })
    return rows


def _general_rows(
    rng: random.Random, templates: tuple[GeneralFact, ...], n: int, reserved: frozenset[str] = frozenset()
) -> list[dict]:
    """`n` facts with distinct questions, cycling through the templates; subjects avoid `reserved` names."""
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"Cannot make {n} distinct general-knowledge facts from these templates.")
        t = templates[len(rows) % len(templates)]
        s = t.subject(rng)
        question = t.question.format(s=s)
        if question in seen or s in reserved:
            continue
        seen.add(question)
        v = t.sample(rng)
        wrong = _wrong_values(rng, t.sample, v, N_PERTURBED_GENERAL)
        rows.append({
            "question": question,
            "answer": _capitalise(t.answer.format(s=s, v=v)),
            "perturbed_answer": [_capitalise(t.answer.format(s=s, v=w)) for w in wrong],
        })
    return rows


def _unique_names(rng: random.Random, n: int) -> list[str]:
    if n > len(FIRST_NAMES) * len(LAST_NAMES) // 2:
        raise ValueError(f"{n} people is too many for the name pool ({len(FIRST_NAMES) * len(LAST_NAMES)} names).")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = _person_name(rng)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _select(rows: list[dict], columns: tuple[str, ...]) -> list[dict]:
    return [{c: r[c] for c in columns} for r in rows]


def generate_benchmark(preset: str | BenchmarkPreset = "tiny", seed: int = 0) -> dict[str, list[dict]]:
    """Every split of the built-in benchmark: split name -> rows with TOFU's columns for that split."""
    p = get_preset(preset)
    if p.n_people < 2:
        raise ValueError("The benchmark needs at least 2 people (forget and retain must both be non-empty).")
    if not 1 <= p.questions_per_person <= len(FACTS):
        raise ValueError(f"questions_per_person must be in 1..{len(FACTS)}, got {p.questions_per_person}.")
    n_forget = {pct: n_forget_people(p.n_people, pct) for pct in FORGET_PERCENTS}
    if n_forget[max(FORGET_PERCENTS)] >= p.n_people:
        raise ValueError(f"{p.n_people} people leave no retain set for forget{max(FORGET_PERCENTS):02d}.")
    n_holdout = n_forget[max(FORGET_PERCENTS)]

    rng = random.Random(f"sau-trainer-synthetic:{seed}")
    names = _unique_names(rng, p.n_people + n_holdout)
    people = [_person_rows(rng, name, p.questions_per_person) for name in names]
    trained, holdout = people[: p.n_people], people[p.n_people :]
    authors = _general_rows(rng, AUTHOR_FACTS, p.n_general_facts, reserved=frozenset(names))
    world = _general_rows(rng, WORLD_FACTS, p.n_general_facts)

    def flat(group: list[list[dict]]) -> list[dict]:
        return [row for person in group for row in person]

    splits: dict[str, list[dict]] = {"full": _select(flat(trained), QA_COLUMNS)}
    for pct in FORGET_PERCENTS:
        k = n_forget[pct]
        splits[f"forget{pct:02d}"] = _select(flat(trained[-k:]), QA_COLUMNS)
        splits[f"retain{100 - pct:02d}"] = _select(flat(trained[:-k]), QA_COLUMNS)
        splits[f"holdout{pct:02d}"] = _select(flat(holdout[:k]), QA_COLUMNS)
        splits[f"forget{pct:02d}_perturbed"] = _select(flat(trained[-k:]), PERTURBED_COLUMNS)
    splits["retain_perturbed"] = _select(flat(trained[:n_holdout]), PERTURBED_COLUMNS)
    splits["real_authors_perturbed"] = _select(authors, GENERAL_COLUMNS)
    splits["world_facts_perturbed"] = _select(world, GENERAL_COLUMNS)
    return {name: splits[name] for name in split_names()}


def write_benchmark(output_dir: str | Path, preset: str | BenchmarkPreset = "tiny", seed: int = 0) -> dict[str, Path]:
    """Writes one ``{split}.json`` per split (JSON lines, as on the Hub) and returns split -> path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in generate_benchmark(preset, seed).items():
        path = out / f"{name}.json"
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        path.write_bytes(text.encode("utf-8"))
        paths[name] = path
    return paths
