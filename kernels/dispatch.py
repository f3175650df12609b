"""Which implementation runs: the Triton kernel on CUDA tensors, the PyTorch reference elsewhere.

``FLOWZOO_KERNELS=reference`` forces the reference everywhere; ``FLOWZOO_KERNELS=triton``
forces the kernel (on the CPU it then needs ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    choice = os.environ.get("FLOWZOO_KERNELS", "auto").lower()
    if choice == "reference" or not triton_available():
        return False
    if choice == "triton":
        return True
    return tensor.is_cuda
