"""Distributions of training times u in [0, 1] (mapped to path time by the path)."""

from __future__ import annotations

import torch

TIME_SAMPLERS = ("uniform", "logit_normal", "stratified")


def sample_uniform_times(n: int, how: str = "uniform", device=None, generator=None) -> torch.Tensor:
    """n times in [0, 1]: ``uniform``, ``stratified`` (one per stratum, lower variance), or ``logit_normal``."""
    if how == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if how == "stratified":
        return (torch.arange(n, device=device) + torch.rand(n, device=device, generator=generator)) / n
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, device=device, generator=generator))
    raise ValueError(f"unknown time sampling {how!r}; choices: {', '.join(TIME_SAMPLERS)}")
