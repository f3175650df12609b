"""The objective contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from flowzoo.registry import Component

if TYPE_CHECKING:
    from flowzoo.module import FlowLM


class Objective(Component, nn.Module):
    """A training loss. ``forward(model, x1)`` takes clean ids (B, L) and returns a dict with a scalar ``loss``
    and any other scalars to log."""

    def forward(self, model: "FlowLM", x1: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError
