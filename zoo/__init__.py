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
