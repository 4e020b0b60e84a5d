"""report.md's bottom line: whether the forget metrics agree on each comparison, and one sentence over all of them.

Why. Each comparison (`report_verdicts.band_comparisons`) is read once per forget metric of the benchmark (TOFU:
forget quality, a KS p-value that moves in steps, and forget ROUGE, a continuous mean). The two can disagree: on
the sparsity penalty one said the sparse model forgets more and the other that it forgets less, and nothing in the
report reconciled them. A reader then picks the one they like. So each comparison's line says whether its metrics
agree, and the section opens with one bottom-line sentence that says "the metrics disagree" where they do and never
picks one metric silently.

Agreement of one comparison's metrics (``agreement``):
- ``agree``: every metric reaches the same decisive verdict (all ``better`` or all ``worse``);
- ``disagree``: one metric says ``better`` and another ``worse``;
- ``partial``: some metrics decide and the others are inconclusive (one metric alone, unconfirmed);
- ``none``: no metric reaches a verdict.
A fragile verdict counts as decisive here; the sentence says it is fragile.

Resolution words (`resolution_words`): every comparison line states its metric's resolution
(`resolution.metric_resolution`), and says plainly when one step of the metric is larger than the difference it
reports (the difference is then smaller than one forget example changing rank: not an effect the metric
resolves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .report_format import SIDE_NAMES
from .resolution import RESOLUTIONS

STEPPED = ("ks", "accuracy")  # resolution kinds with a fixed step; "mean" is continuous


def agreement(cs: Sequence[Mapping]) -> str:
    """``agree``, ``disagree``, ``partial`` or ``none``: how the verdicts of one comparison's forget metrics relate."""
    verdicts = {c["verdict"] for c in cs}
    decided = verdicts - {"inconclusive"}
    if decided >= {"better", "worse"}:
        return "disagree"
    if not decided:
        return "none"
    return "agree" if verdicts == decided and len(cs) > 1 else "partial"


def _side(name: str) -> str:
    return SIDE_NAMES.get(name, name)


def _favoured(c: Mapping) -> str:
    return _side(c["a"] if c["verdict"] == "better" else c["b"])


def _fragile(cs: Sequence[Mapping]) -> bool:
    return any(c.get("fragile") and c["verdict"] != "inconclusive" for c in cs)


def _decided(cs: Sequence[Mapping], label) -> tuple[list[Mapping], str, str]:
    d = [c for c in cs if c["verdict"] != "inconclusive"]
    u = [c for c in cs if c["verdict"] == "inconclusive"]
    return d, ", ".join(label(c["metric"]) for c in d), ", ".join(label(c["metric"]) for c in u)


def agreement_sentence(cs: Sequence[Mapping], label) -> str:
    """One sentence for a comparison's line: do its forget metrics agree? `label(metric_name)` names a metric."""
    kind = agreement(cs)
    frag = ", fragile" if _fragile(cs) else ""
    d, d_names, u_names = _decided(cs, label)
    if kind == "agree":
        if len(cs) == 1:
            return f"Only one forget metric is compared; it favours {_favoured(cs[0])}{frag}."
        return f"The forget metrics agree: all favour {_favoured(cs[0])}{frag}."
    if kind == "disagree":
        says = "; ".join(f"{label(c['metric'])} favours {_favoured(c)}" for c in d)
        return f"**The forget metrics disagree** ({says}): no conclusion on which side forgets more."
    if kind == "partial":
        return (f"Only {d_names} reaches a verdict (favouring {_favoured(d[0])}{frag}); {u_names} is inconclusive, "
                "so the metrics do not confirm each other.")
    return "Neither forget metric reaches a verdict."


def _short(cs: Sequence[Mapping], label) -> str:
    kind = agreement(cs)
    frag = ", fragile" if _fragile(cs) else ""
    d, d_names, u_names = _decided(cs, label)
    if kind == "agree":
        return (f"{'both' if len(cs) == 2 else 'all'} forget metrics favour {_favoured(cs[0])}{frag}"
                if len(cs) > 1 else f"{d_names} favours {_favoured(cs[0])}{frag}")
    if kind == "disagree":
        return ("the metrics disagree (" + ", ".join(f"{label(c['metric'])} favours {_favoured(c)}" for c in d)
                + "), so no conclusion")
    if kind == "partial":
        return f"only {d_names} reaches a verdict (favouring {_favoured(d[0])}{frag}), {u_names} is inconclusive"
    return "no verdict on any forget metric"


def bottom_line(groups: Sequence[tuple[str, Sequence[Mapping]]], label=str) -> str:
    """The one-sentence bottom line over the comparisons: ``groups`` are (what is compared, its comparisons, one
    per forget metric); `label(metric_name)` names a metric. Every comparison is named with the agreement of its
    metrics; where they disagree it says so, and it never picks one metric."""
    return "**Bottom line:** " + "; ".join(f"{head}: {_short(cs, label)}" for head, cs in groups) + "."


def resolution_words(c: Mapping, fmt) -> str:
    """``; resolution: ...`` for a comparison's line (`fmt` formats a number): the metric's resolution on the forget
    set's size, and, when one step of it is larger than the difference, that the difference is below what the
    metric resolves. Without the forget set's size, says that the resolution is not known."""
    r = c.get("resolution")
    if not r:
        return "; resolution: not known (the runs do not say how many forget examples the metrics used)"
    words = f"; resolution: {r['note']}"
    if r.get("diff_below_step") and r.get("step") is not None and c.get("diff_mean") is not None:
        words += (f"; **one step of this metric ({fmt(r['step'])}) is larger than the difference "
                  f"({fmt(abs(c['diff_mean']))})**: the difference is smaller than one forget example changing rank, "
                  "not an effect the metric resolves")
    return words


def continuous_companion(spec) -> str | None:
    """The key of the first continuous forget metric a `ReportSpec` compares (a mean of per-example scores, no fixed
    step), compared beside any stepped one (forget quality, an accuracy); None if it compares none."""
    return next((m.key for m in spec.forget if RESOLUTIONS.get(m.key) == "mean"), None)


def companion_sentence(spec) -> str | None:
    """A sentence for the opening section when the benchmark's first forget metric moves in steps: which continuous
    metric is compared beside it (SPEC section 7, "Resolution")."""
    stepped = [m for m in spec.forget if RESOLUTIONS.get(m.key) in STEPPED]
    companion = continuous_companion(spec)
    if not stepped:
        return None
    label = next(m.label for m in spec.forget if m.key == companion) if companion else None
    names = ", ".join(m.label for m in stepped)
    if label is None:
        return f"{names[:1].upper()}{names[1:]} moves in steps and no continuous forget metric is compared beside it."
    return (f"{names[:1].upper()}{names[1:]} moves in steps (its resolution is stated with each comparison); {label}, a continuous mean "
            "over the forget examples, is compared beside it, so an effect smaller than one step still shows there.")


__all__ = ["agreement", "agreement_sentence", "bottom_line", "companion_sentence", "continuous_companion",
           "resolution_words"]
