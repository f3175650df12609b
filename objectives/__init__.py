"""Training objectives."""

from flowzoo.discover import import_submodules
from flowzoo.objectives.base import Objective
from flowzoo.objectives.flow_matching import FlowMatching

__all__ = ["Objective", "FlowMatching"]
import_submodules(__name__, __path__)
