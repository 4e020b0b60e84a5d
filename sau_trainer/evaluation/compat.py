"""Which metric definitions an evaluation follows: the package's own, or another code base's (``compat``).

The one owner of the compatibility names (`COMPAT_MODES`), of what each one changes (`Definitions`), of the
label that results.json and report.md show (`definitions_label`) and of the version that enters the
evaluation's cache hash (`DEFINITIONS_VERSION`).

- ``None`` (the package defaults): the TOFU metrics follow open-unlearning's definitions (SPEC section 5), except
  that the truth ratio is computed in log space (by TOFU's definition it is a ratio of geometric-mean
  probabilities; after aggressive unlearning those underflow and open-unlearning's ``+ 1e-10`` dominates).
  MUSE follows open-unlearning's MUSE evaluation (METHODS.md section 3.3).
- ``"open-unlearning"`` reproduces open-unlearning's numbers: the truth ratio ``wrong / (correct + 1e-10)`` on
  probabilities (and forget quality as the KS p-value between ``1 / (R + 1e-10)``), the normalised probability
  ``p / (p + sum p_perturbed + 1e-10)``, and extraction strength with its ``k <= |y| - 1`` quirk (a row without any
  correct suffix scores ``1/|y|``, not 0). MUSE: the defaults already are open-unlearning's.
- ``"muse"`` (MUSE protocol only) reproduces MUSE's own code (Shi et al. 2024): VerbMem is the ROUGE-L F1
  without stemming against the ground truth cut to its first 128 tokens (BOS counted), and the zlib attack
  divides by the compressed length of the full text, not of the text cut to 2,048 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFINITIONS_VERSION = 2  # 2: TOFU extraction strength without the EOS position. Bump on any definition change.
PACKAGE_LABEL = "package defaults"


@dataclass(frozen=True)
class Definitions:
    """What a compatibility mode changes (each field's default is the package's definition)."""

    name: str | None = None
    protocols: tuple[str, ...] = ("tofu", "muse", "wmdp")
    summary: str = "the package's definitions"
    truth_ratio_eps: bool = False  # TOFU: R = wrong / (correct + 1e-10) on probabilities, not in log space
    normalised_probability_eps: bool = False  # TOFU: p / (p + sum p_j + 1e-10)
    extraction_strength_quirk: bool = False  # TOFU: k stops at |y| - 1 (open-unlearning's loop)
    verbmem_stemmer: bool = True  # MUSE: ROUGE-L with the Porter stemmer (open-unlearning) or without (MUSE)
    verbmem_reference_tokens: int | None = None  # MUSE: the ground truth cut to its first N tokens (BOS counted)
    zlib_full_text: bool = False  # MUSE: zlib of the untruncated text


COMPAT_MODES: dict[str, Definitions] = {
    "open-unlearning": Definitions(
        name="open-unlearning", protocols=("tofu", "muse"),
        summary="open-unlearning's numbers: truth ratio wrong / (correct + 1e-10) on probabilities, normalised "
                "probability with + 1e-10, extraction strength's 1/|y| floor (MUSE: the defaults already are)",
        truth_ratio_eps=True, normalised_probability_eps=True, extraction_strength_quirk=True),
    "muse": Definitions(
        name="muse", protocols=("muse",),
        summary="MUSE's own code: VerbMem ROUGE-L F1 without stemming against the first 128 tokens of the "
                "ground truth, zlib on the full text",
        verbmem_stemmer=False, verbmem_reference_tokens=128, zlib_full_text=True),
}


def valid_names() -> str:
    return ", ".join(repr(n) for n in COMPAT_MODES)


def resolve(compat: str | None, protocol: str | None = None) -> Definitions:
    """The `Definitions` of `compat` (None: the package's). Unknown names, and names that change nothing of
    `protocol`'s metrics (``muse`` on TOFU), raise a ValueError that lists the valid ones."""
    if compat is None:
        return Definitions()
    if compat not in COMPAT_MODES:
        raise ValueError(f"Unknown compat {compat!r}: valid values are {valid_names()} (or none for the package's "
                         "definitions).")
    d = COMPAT_MODES[compat]
    if protocol is not None and protocol not in d.protocols:
        fits = [n for n, m in COMPAT_MODES.items() if protocol in m.protocols]
        raise ValueError(f"compat {compat!r} defines {'/'.join(p.upper() for p in d.protocols)} metrics only; "
                         f"for the {protocol.upper()} protocol use " + (" or ".join(repr(n) for n in fits) + " or "
                                                                        if fits else "") + "none.")
    return d


def definitions_label(compat: str | None) -> str:
    """What results.json (``definitions``) and report.md say: the compat name, or "package defaults"."""
    return PACKAGE_LABEL if compat is None else resolve(compat).name or PACKAGE_LABEL


QUESTION_KEYS = ("question", "paraphrased_question")  # TOFU's forget and retain *_perturbed columns


def check_recipe(evaluate, benchmark: str, errors: list[str]) -> None:
    """Recipe checks of ``evaluate.compat`` and ``evaluate.question_key`` (called by the schema), one line each."""
    try:
        from ..benchmarks.registry import get_benchmark

        protocol = get_benchmark(benchmark).protocol
    except (KeyError, ValueError):  # an unknown benchmark has its own error
        protocol = None
    try:
        resolve(evaluate.compat, protocol)
    except ValueError as err:
        errors.append(f"evaluate.compat: {err}")
    if evaluate.question_key not in QUESTION_KEYS:
        errors.append(f"evaluate.question_key: {evaluate.question_key!r} is not one of {', '.join(QUESTION_KEYS)}")
    elif evaluate.question_key != "question" and protocol not in (None, "tofu"):
        errors.append(f"evaluate.question_key: {evaluate.question_key!r} is for the TOFU protocol; the benchmark "
                      f"{benchmark!r} is {protocol.upper()}: remove it")
