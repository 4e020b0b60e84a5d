"""What the report shows of a TOFU-protocol benchmark: its columns, utility axis, two forget metrics and
the definitions printed under the tables."""

from __future__ import annotations

from ..report_spec import ForgetMetric, ReportSpec

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

__all__ = ["TOFU_REPORT"]
