"""Probability paths from noise (t = 0) to data (t = 1)."""

from flowzoo.discover import import_submodules
from flowzoo.paths.base import ProbabilityPath
from flowzoo.paths.linear import LinearPath

__all__ = ["ProbabilityPath", "LinearPath"]
import_submodules(__name__, __path__)
