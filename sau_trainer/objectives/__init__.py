"""Unlearning objectives, one file each, and their registry."""

from .base import Objective, ObjectiveContext, forward_nll
from .ga import GradAscent
from .graddiff import GradDiff
from .npo import NPO
from .simnpo import SimNPO

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (GradAscent, GradDiff, NPO, SimNPO)}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "forward_nll", "GradAscent", "GradDiff", "NPO", "SimNPO"]
