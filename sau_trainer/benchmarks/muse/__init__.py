"""The MUSE protocol (Shi et al. 2024, arXiv 2407.06460; METHODS.md section 3): loading and the text encodings
(`data`), which subset a folder holds (`subsets`), the evaluation (`evaluation`), what the report shows (`report`)
and the registry class (`benchmark`), used by ``muse`` and the built-in ``synthetic-muse``."""
