"""flowzoo: flow-map language models beside masked diffusion and autoregressive baselines."""

__version__ = "0.1.0"

from flowzoo.errors import (  # noqa: E402
    CheckpointError,
    DataError,
    FlowzooError,
    IncompatibleComponentsError,
    UnknownComponentError,
)
from flowzoo.registry import build, get, names, register  # noqa: E402

__all__ = [
    "__version__",
    "FlowLM",
    "build",
    "get",
    "names",
    "register",
    "CheckpointError",
    "DataError",
    "FlowzooError",
    "IncompatibleComponentsError",
    "UnknownComponentError",
]


def __getattr__(name: str):
    """``from flowzoo import FlowLM`` without importing Lightning on ``import flowzoo``."""
    if name == "FlowLM":
        from flowzoo.module import FlowLM

        return FlowLM
    raise AttributeError(f"module 'flowzoo' has no attribute {name!r}")
