"""Device names given by a user (``--device cuda``, ``map_location="cuda:1"``), checked before any work."""

from __future__ import annotations

import torch

from flowzoo.errors import DeviceError


def resolve_device(name: str | torch.device | None, what: str = "device") -> torch.device:
    """``name`` as a ``torch.device`` ("auto" or None: CUDA if available, else the CPU); a device this machine
    does not have (CUDA without a GPU, ``cuda:3`` on a one-GPU machine, MPS off a Mac) is refused in one line."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{what} {name!r} is not a device name (cpu, cuda, cuda:N, mps, auto): {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{what} {name!r}: CUDA is not available on this machine (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{what} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"{what} {name!r}: MPS is not available on this machine; use cpu")
    return device
