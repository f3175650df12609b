"""Triton kernels with PyTorch references; :func:`dispatch` picks Triton on CUDA and the reference elsewhere."""

from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.interpolant import interpolant, interpolant_reference, interpolant_triton

__all__ = ["interpolant", "interpolant_reference", "interpolant_triton", "triton_available", "use_triton"]
