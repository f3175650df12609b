"""Lagrangian self-distillation (LSD): the map's time derivative follows the model's own flow."""

from __future__ import annotations

from flowzoo.objectives._flowmap import FlowMapObjective, adaptive_weight, lagrangian_residual, weighted_mean
from flowzoo.registry import register


@register("objective", "lsd")
class LagrangianSelfDistillation(FlowMapObjective):
    """Diagonal CE on delta_{t,t} = D_t plus E ||d/dt X_{s,t}(x_s) - sg b_t(X_{s,t}(x_s))||^2 (d/dt by jvp).

    On the linear path the residual is weighted by (1-t): (1-t) d/dt X + X - sg D_t(X)
    = delta_{s,t} + (1-t)((t-s)/(1-s)) d/dt delta_{s,t} - sg D_t(X), finite for all s <= t <= 1.
    ``adaptive`` multiplies each sequence's loss by the detached (||r||^2 + c)^(-1/2).
    """

    def __init__(
        self,
        diagonal_share: float = 0.5,
        pair_sampling: str = "fmlm",
        boundary: float = 1 / 32,
        time_sampling: str = "uniform",
        map_weight: float = 1.0,
        adaptive: bool = False,
    ) -> None:
        super().__init__(diagonal_share, pair_sampling, boundary, time_sampling, map_weight)
        self.adaptive = adaptive

    def map_loss(self, model, x1):
        pairs = self.pairs(model, x1.shape[0], x1.device)
        xs = model.path.sample(x1, pairs.s, model.vocab_size)  # (B, L, V)
        residual = lagrangian_residual(model, xs, pairs.s, pairs.t)
        per_token = (residual**2).sum(-1)  # (B, L)
        weight = adaptive_weight(per_token) if self.adaptive else None
        return {"map": weighted_mean(per_token, weight), "map_residual": per_token.mean()}
