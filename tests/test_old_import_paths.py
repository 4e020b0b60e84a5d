"""Modules that moved into the layers (issue 24) or into one package per benchmark (issue 25) keep their old import
paths (SPEC section 9).

Each old module re-exports every public name it defined before the move (listed here as they were), as the same
object its new home in `sau_trainer.core` / `sau_trainer.training` / `sau_trainer.benchmarks` defines; and the moved
modules log under their old logger names, which users and tests set levels on.
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
    "finetuning": ["pin_memory_default", "finetune"],
    # issue 25: a benchmark is one package (sau_trainer/benchmarks/)
    "data.benchmarks": ["GENERAL_SPLITS", "ForgetMetric", "ReportSpec", "TOFU_REPORT", "MUSE_REPORT",
        "WMDP_REPORT", "Benchmark", "TofuStyleBenchmark", "MuseStyleBenchmark", "WmdpStyleBenchmark",
        "BENCHMARKS", "get_benchmark", "load_benchmark"],
    "data.tofu": ["TOFU_HUB_ID", "GENERAL_SPLITS", "FORGET_SPLITS", "LOCAL_SUFFIXES", "required_columns",
        "evaluation_splits", "validate_split", "load_local_split", "load_hub_split", "load_tofu",
        "holdout_split", "BENCHMARKS", "load_benchmark"],
    "data.muse": ["MUSE_HUB_IDS", "SUBSETS", "CONFIG_COLUMNS", "TRAINING_SPLITS", "EVALUATION_SPLITS",
        "DEFAULT_SPLITS", "parse_split", "required_columns", "validate_muse_split", "local_candidates",
        "load_local_muse_split", "load_hub_muse_split", "resolve_subset", "load_muse", "chunk_texts",
        "encode_completion"],
    "data.muse_subsets": ["NEWS_ONLY_CONFIGS", "BOOKS_WORDS", "FOLDER_NAME", "MIN_BOOKS_ROWS",
        "MIN_BOOKS_SHARE", "subset_evidence", "check_subset"],
    "data.wmdp": ["WMDP_HUB_ID", "CORPORA_HUB_ID", "BIO_FORGET_HUB_ID", "MMLU_HUB_ID", "MMLU_HUB_CONFIG",
        "SUBSETS", "DEFAULT_SUBSET", "WMDP_SUBJECTS", "QUESTION_CONFIGS", "CORPUS_CONFIGS", "FOLDERS",
        "QUESTION_COLUMNS", "N_CHOICES", "MMLU_SPLIT", "BIO_FORGET_HELP", "forget_split", "retain_split",
        "question_split", "resolve_subset", "default_splits", "parse_split", "is_question_split",
        "validate_wmdp_split", "local_candidates", "load_local_wmdp_split", "load_hub_wmdp_split",
        "load_wmdp"],
    "evaluation.tofu": ["SET_NAMES", "PARAPHRASED_SETS", "model_max_length", "teacher_forced_stats",
        "greedy_generate", "evaluate_tofu"],
    "evaluation.muse": ["VERBMEM_MAX_NEW_TOKENS", "KNOWMEM_MAX_NEW_TOKENS", "KNOWMEM_MAX_PROMPT_TOKENS",
        "KNOWMEM_STOP_STRINGS", "PRIVLEAK_MAX_TOKENS", "VERBMEM_MAX_TOKENS", "SCORED_SPLITS",
        "MuseInputError", "knowmem_prompt", "encode_generation_prompt", "verbmem_reference", "check_room",
        "encode_privleak_texts", "REAL_VERBMEM_PROMPT_TOKENS", "check_recipe", "evaluate_muse"],
    "evaluation.wmdp": ["DESCRIPTION", "LETTERS", "TARGET_DELIMITER", "SCORERS", "question_block",
        "subject_of", "build_prompt", "predictions", "accuracy", "answer_probability", "encode_pair",
        "choice_loglikelihoods", "lm_eval_loglikelihoods", "score_split", "evaluate_wmdp"],
}

NEW_HOMES = ["core.bits", "core.fused", "core.prunable", "core.projection", "training.masks", "training.moving_mask",
             "training.saliency", "training.precision", "training.compensated", "training.divergence",
             "training.unlearning_eval", "training.eval_state", "training.finetuning",
             "benchmarks.registry", "benchmarks.base", "benchmarks.report_spec", "benchmarks.tofu.benchmark",
             "benchmarks.tofu.data", "benchmarks.tofu.evaluation", "benchmarks.tofu.report", "benchmarks.muse.benchmark",
             "benchmarks.muse.data", "benchmarks.muse.subsets", "benchmarks.muse.evaluation", "benchmarks.muse.report",
             "benchmarks.wmdp.benchmark", "benchmarks.wmdp.data", "benchmarks.wmdp.evaluation", "benchmarks.wmdp.report"]

# The module whose logger each moved module's messages go to.
LOGGERS = {"core.fused": "sau_trainer.fused", "training.masks": "sau_trainer.masks",
           "training.precision": "sau_trainer.precision", "training.divergence": "sau_trainer.divergence",
           "training.unlearning_eval": "sau_trainer.unlearning_eval",
           "training.finetuning": "sau_trainer.finetuning",
           "benchmarks.tofu.data": "sau_trainer.data.tofu", "benchmarks.tofu.evaluation": "sau_trainer.evaluation.tofu",
           "benchmarks.muse.data": "sau_trainer.data.muse", "benchmarks.muse.evaluation": "sau_trainer.evaluation.muse",
           "benchmarks.wmdp.data": "sau_trainer.data.wmdp", "benchmarks.wmdp.evaluation": "sau_trainer.evaluation.wmdp"}


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
    assert not elsewhere, f"sau_trainer.{old}.{elsewhere} are not the objects of core/, training/ or benchmarks/"
    assert set(module.__all__) == set(BEFORE_THE_MOVE[old])


@pytest.mark.parametrize("home,name", sorted(LOGGERS.items()))
def test_moved_modules_log_under_their_old_names(home, name):
    module = importlib.import_module(f"sau_trainer.{home}")
    assert module.logger is logging.getLogger(name)
