"""Unlearning objectives, one file each, and their registry."""

from .base import Objective, ObjectiveContext, forward_nll
from .ga import GradAscent
from .graddiff import GradDiff
from .npo import NPO
from .pdu import PDU
from .rmu import RMU
from .satimp import SatImp
from .simnpo import SimNPO
from .wga import WGA

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (GradAscent, GradDiff, NPO, SimNPO, RMU, PDU, WGA, SatImp)}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "forward_nll", "GradAscent", "GradDiff", "NPO", "SimNPO",
           "RMU", "PDU", "WGA", "SatImp"]
