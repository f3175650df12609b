"""Next-token cross-entropy for a causal backbone."""

from __future__ import annotations

import math

import torch

from flowzoo.objectives.base import Objective
from flowzoo.paths.autoregressive import CAUSAL_FLAG, causal_incompatibility  # noqa: F401 (re-exported)
from flowzoo.registry import register
from flowzoo.state import FusedSwitch, check_switch, hidden, lm_cross_entropy


@register("objective", "ar")
class Autoregressive(FusedSwitch, Objective):
    """NLL = -(1/L) sum_i log p_theta(x_i | BOS, x_<i), with logits (B, L, V) of the causal network on
    [BOS, x_0..x_{L-2}] (no time). ``ppl_bound`` = exp(loss) is the model's exact perplexity on the batch.
    ``fused`` (None: automatic) computes the CE with flowzoo.kernels (no (B, L, V) logits)."""

    def __init__(self, fused: bool | None = None) -> None:
        super().__init__()
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        if not getattr(parts["head"], "on_simplex", False) or not hasattr(parts["head"], "log_probs"):
            return "head", "next-token prediction needs a categorical head"
        return causal_incompatibility(parts) or self.fused_incompatibility(parts)

    def token_nll(self, model, x1: torch.Tensor) -> torch.Tensor:
        """-log p_theta(x_i | BOS, x_<i) for every position: (B, L)."""
        if self.use_fused(model):
            return lm_cross_entropy(model, hidden(model, model.path.shift_right(x1, model.vocab_size), None), x1)
        logits = model.logits(model.path.shift_right(x1, model.vocab_size), None)  # (B, L, V)
        return model.head.loss(logits, x1)

    def sequence_nll(self, model, ids: torch.Tensor) -> torch.Tensor:
        """(B, L-1): -log p(x_i | BOS, x_<i) for i >= 1 (the judge scores tokens after the first)."""
        return self.token_nll(model, ids)[:, 1:]

    def forward(self, model, x1):
        loss = self.token_nll(model, x1).mean()
        ppl = torch.exp(loss.detach()) if loss.detach() < 700 else torch.tensor(math.inf, device=loss.device)
        return {"loss": loss, "ppl_bound": ppl}
