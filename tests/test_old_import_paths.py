"""Modules that moved into the layers (issue 24) keep their old import paths (SPEC section 9).

Each old module re-exports every public name it defined before the move (listed here as they were), as the same
object its new home in `sau_trainer.core` / `sau_trainer.training` defines; and the moved modules log under their
old logger names, which users and tests set levels on.
"""

from __future__ import annotations

import importlib
import logging

import pytest

# Every public name each module defined before the move (the names at the old path are the contract).
BEFORE_THE_MOVE = {
    "masks": ["MASKS_FILE", "HANDFUL", "HANDFUL_FRACTION", "pack_bool", "unpack_bool", "Layout", "PLAIN",
              "PrunableWeight", "language_model", "decoder_layers", "prunable_weights", "prunable_modules",
              "prunable_parameters", "layouts", "check_trainable_weights", "LazyMasks", "SparsityMasks",
              "check_resume_masks"],
    "fused": ["COMPILE_MIN_NUMEL", "pack_planes", "unpack_planes", "to_planes", "from_planes", "kernel_mode", "where_",
              "CHUNK", "where_many_", "scale_update_", "compile_status"],
    "moving_mask": ["UNITS", "NM_GROUPS", "nm_pattern", "project_topk", "project_nm", "unit_counts", "MovingMask"],
    "saliency": ["LossFn", "require_input_grads_if_reentrant", "compute_saliency"],
    "precision": ["LOW_PRECISION_DTYPES", "POLICIES", "KAHAN", "STOCHASTIC_ROUNDING", "WARN_BELOW",
                  "CompensatedOptimizer", "COMPENSATED_OPTIMIZERS", "OPTIMIZER_CHOICES",
                  "compensated_optimizer_cls_and_kwargs", "Compensation", "unwrap_optimizer", "compensation_of",
                  "PrecisionPlan", "plan_precision", "upcast_parameters", "autocast_enabled", "update_mode_rescaled",
                  "check_precision", "apply_precision_plan", "apply_precision_policy", "compensation_buffer",
                  "UpdateProbe", "UpdateCheckCallback"],
    "divergence": ["TrainingDiverged", "local_grad_norm", "DivergenceGuard", "DivergenceChecks"],
    "unlearning_eval": ["STATE_KEY", "BEST_FILE", "MODES", "numeric_metrics", "rng_state", "set_rng_state", "agree",
                        "reshard", "snapshot", "load_snapshot", "UnlearningEvaluationCallback"],
}

NEW_HOMES = ["core.bits", "core.fused", "core.prunable", "core.projection", "training.masks", "training.moving_mask",
             "training.saliency", "training.precision", "training.compensated", "training.divergence",
             "training.unlearning_eval", "training.eval_state"]

# The module whose logger each moved module's messages go to.
LOGGERS = {"core.fused": "sau_trainer.fused", "training.masks": "sau_trainer.masks",
           "training.precision": "sau_trainer.precision", "training.divergence": "sau_trainer.divergence",
           "training.unlearning_eval": "sau_trainer.unlearning_eval"}


def _defined_in_a_new_home(value) -> bool:
    for home in NEW_HOMES:
        module = importlib.import_module(f"sau_trainer.{home}")
        if any(v is value for k, v in vars(module).items() if not k.startswith("_")):
            return True
    return False


@pytest.mark.parametrize("old", sorted(BEFORE_THE_MOVE))
def test_the_old_path_reexports_every_name_from_its_new_home(old):
    module = importlib.import_module(f"sau_trainer.{old}")
    missing = [name for name in BEFORE_THE_MOVE[old] if not hasattr(module, name)]
    assert not missing, f"sau_trainer.{old} no longer exports {missing}"
    elsewhere = [name for name in BEFORE_THE_MOVE[old] if not _defined_in_a_new_home(getattr(module, name))]
    assert not elsewhere, f"sau_trainer.{old}.{elsewhere} are not the objects of core/ or training/"
    assert set(module.__all__) == set(BEFORE_THE_MOVE[old])


@pytest.mark.parametrize("home,name", sorted(LOGGERS.items()))
def test_moved_modules_log_under_their_old_names(home, name):
    module = importlib.import_module(f"sau_trainer.{home}")
    assert module.logger is logging.getLogger(name)
