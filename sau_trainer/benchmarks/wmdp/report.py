"""What the report shows of a WMDP-protocol benchmark: its columns, utility axis, two forget metrics and
the definitions printed under the tables."""

from __future__ import annotations

from ..report_spec import ForgetMetric, ReportSpec

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

__all__ = ["WMDP_REPORT"]
