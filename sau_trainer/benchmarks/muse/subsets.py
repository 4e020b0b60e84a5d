"""Which MUSE subset a local folder holds: News files are never read as Books, nor the other way round.

``--data-dir`` replaces the Hub, so the subset option (``news``, the default, or ``books``) only labels the
results; read from the wrong folder, a whole evaluation would be filed under the other subset without a word.
The folder is checked for what tells the two apart on the Hub (``muse-bench/MUSE-News``,
``muse-bench/MUSE-Books``):

- **layout**: only MUSE-News has the ``scal/`` and ``sust/`` configs (its scalability and sustainability
  forget sets); MUSE-Books has ``raw``, ``verbmem``, ``knowmem``, ``privleak`` and ``train`` only;
- **dataset card**: the Hub's ``README.md`` lists the configs (``config_name: scal`` / ``sust``: News) and
  may name the repository;
- **folder name**: a download keeps the repository's name (``MUSE-News``, or the Hub cache's
  ``datasets--muse-bench--MUSE-Books``);
- **content**: the Books forget set is the Harry Potter novels and the retain set the Harry Potter FanWiki,
  so their texts name Hogwarts, Dumbledore, Hermione and the like on most rows; BBC news does not.

Files with none of these features (the built-in benchmark written in the Hub's layout) are read under either
name. Any feature of the other subset is an error that names it and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

NEWS_ONLY_CONFIGS = ("scal", "sust")
BOOKS_WORDS = re.compile(r"\b(Hogwarts|Dumbledore|Hermione|Voldemort|Gryffindor|Slytherin|Hagrid|Muggles?)\b")
FOLDER_NAME = re.compile(r"muse[-_ ]?(news|books)", re.IGNORECASE)
# content evidence: at least this many rows, and this share of the rows scanned, name the Books signature
MIN_BOOKS_ROWS = 3
MIN_BOOKS_SHARE = 0.2
_SCAN_ROWS = 200  # per split
_SCAN_CHARS = 20_000  # per string


def _content_evidence(splits: Mapping[str, list[dict]]) -> str | None:
    scanned = hits = 0
    for rows in splits.values():
        for row in rows[:_SCAN_ROWS]:
            scanned += 1
            strings = [v[:_SCAN_CHARS] for v in row.values() if isinstance(v, str)] if isinstance(row, dict) else []
            hits += any(BOOKS_WORDS.search(s) for s in strings)
    if hits >= MIN_BOOKS_ROWS and hits >= MIN_BOOKS_SHARE * scanned:
        return (f"{hits} of the {scanned} rows read name Harry Potter's world (Hogwarts, Dumbledore, Hermione, ...), "
                "as MUSE-Books' texts do")
    return None


def subset_evidence(data_dir: str | Path, splits: Mapping[str, list[dict]] | None = None) -> dict[str, list[str]]:
    """``{"news": [reasons], "books": [reasons]}``: what in `data_dir` (and the rows read from it) points to
    each subset; both lists empty when nothing does."""
    root = Path(data_dir)
    found: dict[str, list[str]] = {"news": [], "books": []}
    configs = [c for c in NEWS_ONLY_CONFIGS if (root / c).is_dir()]
    if configs:
        found["news"].append(f"it has the {' and '.join(c + '/' for c in configs)} folder"
                             f"{'s' if len(configs) > 1 else ''}, which only MUSE-News has")
    card = root / "README.md"
    if card.is_file():
        text = card.read_text(errors="replace")
        named = [name for name in ("News", "Books") if f"MUSE-{name}" in text]
        if len(named) == 1:  # a card naming both says nothing
            found[named[0].lower()].append(f"its README.md names MUSE-{named[0]}")
        if re.search(r"config_name:\s*(scal|sust)\b", text):
            found["news"].append("its README.md lists the scal/sust configs, which only MUSE-News has")
    parts = root.resolve().parts
    names = [parts[-1]] if parts else []
    if len(parts) >= 3 and parts[-2] == "snapshots":  # the Hub cache: datasets--muse-bench--MUSE-News/snapshots/<rev>
        names.append(parts[-3])
    for part in names:
        m = FOLDER_NAME.search(part)
        if m:
            found[m.group(1).lower()].append(f"the folder is named {part!r}")
    content = _content_evidence(splits or {})
    if content:
        found["books"].append(content)
    return found


def check_subset(data_dir: str | Path, subset: str, splits: Mapping[str, list[dict]] | None = None) -> None:
    """Raises ValueError when `data_dir` (or the rows read from it) shows features of the MUSE subset other
    than `subset`, naming them and the fix."""
    other = "books" if subset == "news" else "news"
    reasons = subset_evidence(data_dir, splits)[other]
    if reasons:
        name = {"news": "MUSE-News", "books": "MUSE-Books"}
        raise ValueError(
            f"{data_dir} looks like {name[other]}, not {name[subset]}: {'; '.join(reasons)}. Pass --subset {other} "
            f"(a recipe: data.subset: {other}), or point --data-dir (data.data_dir) at a copy of "
            f"muse-bench/{name[subset]}.")
