"""Categorical head: softmax over the vocabulary, cross-entropy to the clean token (VFM / CatFlow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowzoo.heads.base import Head
from flowzoo.registry import register


@register("head", "categorical")
class CategoricalHead(Head):
    """Softmax head: D_t(x) = softmax(logits), loss -sum_v y_v log D_t(x)_v (cross-entropy, y one-hot or soft)."""

    on_simplex = True

    def __init__(self, softcap: float | None = None) -> None:
        super().__init__()
        if softcap is not None and softcap <= 0:
            raise ValueError(f"softcap must be positive, got {softcap}")
        self.softcap = softcap

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft-cap c tanh(logits / c) before the log-softmax (FMLM uses c = 30)."""
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.cap(logits.float()), dim=-1)

    def denoise(self, logits):
        return self.log_probs(logits).exp()

    def loss(self, logits, target):
        if target.dim() == 2:
            flat = self.cap(logits.float()).flatten(0, 1)
            return F.cross_entropy(flat, target.flatten(), reduction="none").view(target.shape)
        return -(target * self.log_probs(logits)).sum(-1)
