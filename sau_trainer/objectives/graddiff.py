"""GradDiff: gradient ascent on the forget set plus descent on the retain set (Liu et al. 2022)."""

from .ga import GradAscent


class GradDiff(GradAscent):
    name = "graddiff"
    label = "GradDiff"
    uses_retain = True
