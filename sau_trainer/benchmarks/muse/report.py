"""What the report shows of a MUSE-protocol benchmark: its columns, utility axis, two forget metrics and
the definitions printed under the tables."""

from __future__ import annotations

from ..report_spec import ForgetMetric, ReportSpec

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

__all__ = ["MUSE_REPORT"]
