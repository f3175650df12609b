"""Progressive / semigroup self-distillation (PSD) in cross-entropy form, forward passes only."""

from __future__ import annotations

import torch

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
from flowzoo.state import DenseState, check_switch
from flowzoo.validation import check_choice


def semigroup_target(model, xs, s, u, t, short_model=None, short_gap: float = 0.0, state=None, hold=None):
    """delta_target = gamma delta_{s,u}(x_s) + (1-gamma) delta_{u,t}(X_{s,u}(x_s)), gamma = path.semigroup_weight(s, u, t).

    Evaluated without gradient, on ``state`` (default: the dense state, a (B, L, V) target; on the embedded state a
    TeacherTarget of the two pieces' hidden states, with the landing point X_{s,u} = a e_s + b delta W_in^T).
    With ``short_model`` (a teacher flow; dense state) a piece shorter than ``short_gap`` in path time is read from
    its denoiser at the piece's start (delta_{a,b} ~ D_a for b - a small). ``hold`` (training for prompts,
    flowzoo.prompt.KnownRows.hold): each piece reads its state (x_s, then X_{s,u}) with the known positions at
    their clean point.
    """
    state = DenseState(model) if state is None else state
    path = model.path

    def piece(x, a, b):
        if hold is not None:
            x = hold(x)
        delta = state.predict(x, b, a)
        if short_model is not None and short_gap > 0:
            short = (b - a) < short_gap
            if short.any():
                D = short_model.head.denoise(short_model.logits(x, a, a))
                delta = torch.where(expand_time(short), D, delta)
        return delta

    with torch.no_grad():
        d_su = piece(xs, s, u)
        x_u = path.flow_map(xs, state.in_state(d_su), s, u)  # X_{s,u}(x_s)
        d_ut = piece(x_u, u, t)
        return state.mixture(d_su, d_ut, path.semigroup_weight(s, u, t))


def semigroup_term(model, state, xs, s, t, target, adaptive: bool, known: torch.Tensor | None = None):
    """loss_head(delta_{s,t}(x_s), target) per token on ``state``: returns finish() -> {"map_kl", "map"} (``map_kl`` =
    CE - H(target), zero exactly when the semigroup holds; ``adaptive``: dense state only), averaged over the
    positions not ``known`` (B, L) (a prompt's, in training)."""
    term = state.head_loss(xs, t, s, target, keep_logits=adaptive)

    def finish():
        per_token = term.value  # (B, L)
        out = {}
        if model.head.on_simplex:  # KL = CE - H(target)
            out["map_kl"] = weighted_mean(per_token.detach() - state.entropy(target), known=known)
        weight = None
        if adaptive:
            with torch.no_grad():
                weight = adaptive_weight(((model.head.denoise(term.logits) - target) ** 2).sum(-1), known=known)
        out["map"] = weighted_mean(per_token, weight, known)
        return out

    return finish


def semigroup_loss(model, xs, s, t, target, adaptive: bool) -> dict[str, torch.Tensor]:
    """loss_head(delta_{s,t}(x_s), target) per token (the CE(target || delta), or MSE for the Gaussian head) on the
    dense state (B, L, V): {"map_kl", "map"}."""
    return semigroup_term(model, DenseState(model), xs, s, t, target, adaptive)()


@register("objective", "psd")
class ProgressiveSelfDistillation(FlowMapObjective):
    """Diagonal CE plus CE(sg[gamma delta_{s,u}(x_s) + (1-gamma) delta_{u,t}(X_{s,u}(x_s))] || delta_{s,t}(x_s)).

    Defaults follow FMLM: half the batch on the diagonal, pairs d ~ U, s = U (1 - d), 1/32 of them
    forced to (0, 1), u the midpoint in the path's uniform time (``midpoint="random"``: u ~ U[s, t]).
    ``adaptive`` uses the detached weights (||q - p||^2 + c)^(-1/2) of Discrete Flow Maps.
    ``condition_share``: training for prompts (:class:`~flowzoo.objectives._flowmap.FlowMapObjective`): the target's
    two pieces read x_s and X_{s,u}(x_s) with the known positions held clean.
    """

    def __init__(
        self,
        flow_map: FlowMapConfig = FlowMapConfig(),
        midpoint: str = "middle",
        adaptive: bool = False,
        fused: bool | None = None,
        condition_share: float = 0.0,
    ) -> None:
        super().__init__(flow_map, condition_share)
        check_choice(midpoint, MIDPOINTS, "midpoint")
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

    def map_loss(self, model, state, xs, pairs, u, x1, known):
        xs = state.value(xs)  # (B, L, V), or its embedding (B, L, D)
        target = semigroup_target(model, xs, pairs.s, u, pairs.t, state=state, hold=known.hold)
        return semigroup_term(model, state, xs, pairs.s, pairs.t, target, self.adaptive, known.mask)
