"""Gaussian head: a point prediction of the endpoint regressed with MSE (plain flow matching)."""

from __future__ import annotations

import torch.nn.functional as F

from flowzoo.heads.base import Head
from flowzoo.registry import register


@register("head", "gaussian")
class GaussianHead(Head):
    """Point estimate D_t(x) = logits, loss ||D_t(x) - onehot(x1)||^2 (MSE flow matching, the ablation)."""

    on_simplex = False

    def denoise(self, logits):
        return logits.float()

    def loss(self, logits, target):
        if target.dim() == 2:
            target = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return ((logits.float() - target.float()) ** 2).sum(-1)
