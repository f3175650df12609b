"""The backbone contract shared by flows, flow maps, masked diffusion and AR."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from flowzoo.registry import Component

_PLAIN_ATTENTION = False


@contextlib.contextmanager
def plain_attention() -> Iterator[None]:
    """Route attention through explicit matmul + softmax (forward-mode AD cannot pass fused kernels)."""
    global _PLAIN_ATTENTION
    previous, _PLAIN_ATTENTION = _PLAIN_ATTENTION, True
    try:
        yield
    finally:
        _PLAIN_ATTENTION = previous


def use_plain_attention() -> bool:
    return _PLAIN_ATTENTION


class Backbone(Component, nn.Module):
    """Maps a state ``x`` (B, L, V_in) float, or ids (B, L) long, and times (t, s) to logits (B, L, V_out).

    Hyper-parameters are given at construction; the vocabulary sizes are bound later with
    :meth:`bind` because they come from the data.
    """

    in_dim: int | None = None
    out_dim: int | None = None

    def bind(self, in_dim: int, out_dim: int) -> "Backbone":
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        cache: "list | None" = None,
        start: int = 0,
    ) -> torch.Tensor:
        raise NotImplementedError
