"""The TOFU protocol (Maini et al. 2024, arXiv 2401.06121; SPEC section 5): loading TOFU's splits (`data`), the
batched evaluator (`evaluation`), what the report shows (`report`) and the registry class (`benchmark`), used by
``tofu`` and the built-in ``synthetic``."""
