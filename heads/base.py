"""The head contract."""

from __future__ import annotations

import torch
from torch import nn

from flowzoo.registry import Component


class Head(Component, nn.Module):
    """Turns backbone logits (B, L, V) into the denoiser D_t(x) = E[onehot(x1) | x_t = x] and its loss."""

    on_simplex: bool = False  # whether ``denoise`` returns probability vectors

    def denoise(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token loss (B, L) against clean ids (B, L) or a soft target (B, L, V)."""
        raise NotImplementedError
