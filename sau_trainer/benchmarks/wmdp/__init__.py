"""WMDP with MMLU (Li et al. 2024, arXiv 2403.03218; METHODS.md section 4): loading (`data`), zero-shot
multiple-choice scoring (`evaluation`), what the report shows (`report`) and the registry class (`benchmark`), used
by ``wmdp`` and the built-in ``synthetic-wmdp``."""
