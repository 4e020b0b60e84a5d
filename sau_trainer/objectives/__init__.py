"""Unlearning objectives, one file each, and their registry."""

from .altpo import AltPO
from .base import Objective, ObjectiveContext, forward_nll
from .ceu import CEU
from .ga import GradAscent
from .graddiff import GradDiff
from .idkdpo import IdkDPO
from .idknll import IdkNLL
from .npo import NPO
from .pdu import PDU
from .rmu import RMU
from .satimp import SatImp
from .simnpo import SimNPO
from .undial import UNDIAL
from .wga import WGA

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (GradAscent, GradDiff, NPO, SimNPO, RMU, PDU, WGA, SatImp,
                                                                  IdkDPO, IdkNLL, UNDIAL, CEU, AltPO)}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "forward_nll", "GradAscent", "GradDiff", "NPO", "SimNPO",
           "RMU", "PDU", "WGA", "SatImp", "IdkDPO", "IdkNLL", "UNDIAL", "CEU", "AltPO",
           "definitions"]


def definitions(objective: str, args: dict) -> dict[str, int]:
    """The changed definitions a run of `objective` with SAUConfig settings `args` computes (`Objective.definitions`):
    what the pipeline adds to an unlearning task's settings so that its hash follows the definitions."""
    return OBJECTIVES[objective].definitions(args or {})
