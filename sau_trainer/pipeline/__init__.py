"""Recipes: one YAML file runs an experiment from model to report (train, prune, unlearn, evaluate, report, push).

    from sau_trainer.pipeline import load_recipe, run_recipe
    run_recipe(load_recipe("recipes/demo.yaml", ["unlearn.learning_rate=2e-4"]), "outputs/demo")
"""

from .runner import RunSummary, StageFailed, run_recipe
from .schema import Recipe, RecipeError, apply_overrides, describe_keys, load_recipe, validate
from .stages import STAGES, plan

__all__ = ["STAGES", "Recipe", "RecipeError", "RunSummary", "StageFailed", "apply_overrides", "describe_keys",
           "load_recipe", "plan", "run_recipe", "validate"]
