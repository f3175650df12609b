"""Progressive / semigroup self-distillation (PSD) in cross-entropy form, forward passes only."""

from __future__ import annotations

import torch

from flowzoo.kernels import CrossEntropyPart, TeacherTarget
from flowzoo.objectives.flow_map_config import FlowMapConfig
from flowzoo.objectives._flowmap import (
    MIDPOINTS,
    FlowMapObjective,
    adaptive_weight,
    sample_middle,
    weighted_mean,
)
from flowzoo.paths.base import expand_time
from flowzoo.registry import register
from flowzoo.state import check_switch, delta_embedding, hidden, mixture_entropy


def semigroup_target(model, xs, s, u, t, short_model=None, short_gap: float = 0.0) -> torch.Tensor:
    """delta_target = gamma delta_{s,u}(x_s) + (1-gamma) delta_{u,t}(X_{s,u}(x_s)), gamma = (1-t)(u-s)/((1-u)(t-s)).

    Evaluated without gradient. With ``short_model`` (a teacher flow), a piece shorter than ``short_gap``
    in path time is read from its denoiser at the piece's start (delta_{a,b} ~ D_a for b - a small).
    """
    path = model.path

    def piece(x, a, b):
        delta = model.head.denoise(model.logits(x, b, a))
        if short_model is not None and short_gap > 0:
            short = (b - a) < short_gap
            if short.any():
                D = short_model.head.denoise(short_model.logits(x, a, a))
                delta = torch.where(expand_time(short), D, delta)
        return delta

    with torch.no_grad():
        d_su = piece(xs, s, u)
        x_u = path.flow_map(xs, d_su, s, u)
        d_ut = piece(x_u, u, t)
        g = expand_time(path.semigroup_weight(s, u, t))
        return g * d_su + (1 - g) * d_ut  # (B, L, V)


def semigroup_loss(model, xs, s, t, target, adaptive: bool) -> dict[str, torch.Tensor]:
    """loss_head(delta_{s,t}(x_s), target) per token (the CE(target || delta), or MSE for the Gaussian head)."""
    logits = model.logits(xs, t, s)
    per_token = model.head.loss(logits, target)  # (B, L)
    out = {}
    if model.head.on_simplex:  # KL = CE - H(target): zero exactly when the semigroup holds
        entropy = -(target * target.clamp_min(1e-30).log()).sum(-1)
        out["map_kl"] = (per_token - entropy).mean()
    weight = None
    if adaptive:
        with torch.no_grad():
            weight = adaptive_weight(((model.head.denoise(logits) - target) ** 2).sum(-1))
    out["map"] = weighted_mean(per_token, weight)
    return out


def fused_semigroup_part(model, e_s, pairs, u):
    """:func:`semigroup_target` + :func:`semigroup_loss` (not adaptive) on the fused path: a kernels part and its finish.

    x_s enters as its embedding e_s = x_s W_in^T (m, L, D); the landing point X_{s,u} = a x_s + b delta_{s,u} as
    a e_s + b delta_embedding(h_{s,u}) (the embedding is linear); the target gamma delta_{s,u} + (1-gamma)
    delta_{u,t} is a TeacherTarget of the two teachers' hidden states, so no (B, L, V) tensor is built.
    """
    s, t = pairs.s, pairs.t
    with torch.no_grad():
        h_su = hidden(model, e_s, u, s, embedded=True)
        landing = model.path.flow_map(e_s, delta_embedding(model, h_su), s, u)  # X_{s,u} W_in^T
        h_ut = hidden(model, landing, t, u, embedded=True)
        g = model.path.semigroup_weight(s, u, t)
        teachers, mix = torch.stack([h_su, h_ut]), torch.stack([g, 1 - g])[:, :, None]  # (2, m, L, D), (2, m, 1)
    part = CrossEntropyPart(hidden(model, e_s, t, s, embedded=True), TeacherTarget(teachers, mix), model.head.softcap)

    def finish(per_token):
        entropy = mixture_entropy(model, teachers, mix)  # KL = CE - H(target), as semigroup_loss logs it
        return {"map_kl": (per_token.detach() - entropy).mean(), "map": weighted_mean(per_token)}

    return part, finish


@register("objective", "psd")
class ProgressiveSelfDistillation(FlowMapObjective):
    """Diagonal CE plus CE(sg[gamma delta_{s,u}(x_s) + (1-gamma) delta_{u,t}(X_{s,u}(x_s))] || delta_{s,t}(x_s)).

    Defaults follow FMLM: half the batch on the diagonal, pairs d ~ U, s = U (1 - d), 1/32 of them
    forced to (0, 1), u the midpoint in the path's uniform time (``midpoint="random"``: u ~ U[s, t]).
    ``adaptive`` uses the detached weights (||q - p||^2 + c)^(-1/2) of Discrete Flow Maps.
    """

    def __init__(
        self,
        flow_map: FlowMapConfig = FlowMapConfig(),
        midpoint: str = "middle",
        adaptive: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(flow_map)
        if midpoint not in MIDPOINTS:
            raise ValueError(f"unknown midpoint {midpoint!r}; choices: {', '.join(MIDPOINTS)}")
        if fused and adaptive:
            raise ValueError("psd: fused=true does not support adaptive=true (its weight needs the (B, L, V) "
                             "distance to the target); set fused=false or leave it unset")
        self.midpoint, self.adaptive = midpoint, adaptive
        self.fused = check_switch(fused)

    def fused_refusal(self, parts):
        if self.adaptive:
            return "objective", "adaptive weights need the dense (B, L, V) distance to the target"
        return super().fused_refusal(parts)

    def map_times(self, model, pairs):
        return sample_middle(model.path, pairs, self.midpoint)  # u in [s, t]

    def fused_map_part(self, model, e_s, pairs, u):
        return fused_semigroup_part(model, e_s, pairs, u)

    def map_loss(self, model, x1):
        pairs = self.pairs(model, x1.shape[0], x1.device)
        u = self.map_times(model, pairs)
        xs = model.path.sample(x1, pairs.s, model.vocab_size)  # (B, L, V)
        target = semigroup_target(model, xs, pairs.s, u, pairs.t)
        return semigroup_loss(model, xs, pairs.s, pairs.t, target, self.adaptive)
