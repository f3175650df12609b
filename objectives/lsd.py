"""Lagrangian self-distillation (LSD): the map's time derivative follows the model's own flow."""

from __future__ import annotations

import torch

from flowzoo.backbones.base import plain_attention
from flowzoo.kernels import LagrangianPart
from flowzoo.objectives.flow_map_config import FlowMapConfig
from flowzoo.objectives._flowmap import FlowMapObjective, adaptive_weight, lagrangian_residual
from flowzoo.registry import register
from flowzoo.state import LossTerm, check_switch, delta_embedding, hidden
from flowzoo.validation import check_times, on_host


def fused_lagrangian_part(model, e_s, pairs, stop_tangent: bool = False, checkpoint: bool = True, hold=None) -> LagrangianPart:
    """The kernels part of ||(1-t) d/dt X_{s,t}(x_s) + X - sg D_t(X)||^2 per token on the fused path.

    = ||delta + kappa d/dt delta - sg D_t(X)||^2 with kappa = (1-t) b, X = a x_s + b delta, (a, b) = path.map_weights(s, t):
    the jvp is taken of the trunk's hidden state in t from e_s = x_s W_in^T (m, L, D) (block by block and
    recomputed in the backward pass with ``checkpoint``); X enters the teacher as a e_s + b delta_embedding(h);
    the residual is read from the three hidden states tile by tile over V. ``hold``: the landing point's known
    positions at their clean point W_in[:, x^l] before the teacher reads it (training for prompts).
    """
    s, t = pairs.s, pairs.t
    if stop_tangent:  # the tangent is a constant: its jvp keeps no graph, h comes from a plain pass
        with torch.no_grad():
            _, h_dot = trunk_jvp(model, e_s, t, s)
        h = hidden(model, e_s, t, s, embedded=True)
    else:
        h, h_dot = trunk_jvp(model, e_s, t, s, checkpoint)
    with torch.no_grad():
        landing = model.path.flow_map(e_s, delta_embedding(model, h.detach()), s, t)  # X_{s,t} W_in^T
        if hold is not None:
            landing = hold(landing)
        h_teacher = hidden(model, landing, t, t, embedded=True)
    return LagrangianPart(h, h_dot, h_teacher, (1 - t) * model.path.map_weights(s, t)[1], stop_tangent=stop_tangent)


def trunk_jvp(model, e, t, s, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, dh/dt): the trunk's final hidden state for the input embedding e (m, L, D) at path times (t, s)
    and its derivative in t (tangent 1 on t, e and s fixed), in float32 with plain attention.

    A backbone with ``hidden_jvp`` (dit) runs it block by block (``checkpoint``: recomputed in the backward
    pass, exact gradients); any other trunk gets one torch.func.jvp through ``hidden``.
    """
    check_times(t, s, batch=e.shape[0], values=on_host(e))
    with torch.autocast(device_type=e.device.type, enabled=False):
        nt, nt_dot = torch.func.jvp(model.path.network_time, (t,), (torch.ones_like(t),))
        ns = model.path.network_time(s)
        backbone = model.backbone
        if callable(getattr(backbone, "hidden_jvp", None)):
            return backbone.hidden_jvp(e, nt, ns, nt_dot, checkpoint=checkpoint)
        with plain_attention():
            return torch.func.jvp(lambda tt: backbone.hidden(e, tt, ns, embedded=True), (nt,), (nt_dot,))


def lagrangian_term(model, state, xs, pairs, stop_tangent: bool = False, checkpoint: bool = True, hold=None) -> LossTerm:
    """||(1-t) d/dt X_{s,t}(x_s) + X - sg D_t(X)||^2 per token (dX/dt - sg b_t(X) off the mean-denoiser form):
    the one place the LSD kernel is chosen. Embedded state: :func:`fused_lagrangian_part` (the jvp of the trunk's
    hidden state, the residual tile by tile over V); dense state: :func:`lagrangian_residual` (the jvp of the map).
    ``hold``: the known positions of a prompt, held at the landing point the teacher reads."""
    if state.embedded:
        return state.add_part(fused_lagrangian_part(model, xs, pairs, stop_tangent, checkpoint, hold))
    residual = lagrangian_residual(model, xs, pairs.s, pairs.t, stop_tangent=stop_tangent, hold=hold)  # (B, L, V)
    return LossTerm((residual**2).sum(-1))


@register("objective", "lsd")
class LagrangianSelfDistillation(FlowMapObjective):
    """Diagonal CE on delta_{t,t} = D_t plus E ||d/dt X_{s,t}(x_s) - sg b_t(X_{s,t}(x_s))||^2 (d/dt by jvp).

    On the linear path the residual is weighted by (1-t): (1-t) d/dt X + X - sg D_t(X)
    = delta_{s,t} + (1-t)((t-s)/(1-s)) d/dt delta_{s,t} - sg D_t(X), finite for all s <= t <= 1.
    ``adaptive`` multiplies each sequence's loss by the detached (||r||^2 + c)^(-1/2).
    ``fused`` (None: automatic) computes both losses with flowzoo.kernels on the linear path and the
    categorical head without soft-cap (the jvp is then taken of the trunk's hidden state).
    ``tangent_grad=False`` treats the time-derivative term as a constant (MeanFlow-style semi-gradient:
    delta + kappa sg[d/dt delta] - sg D): the same residual and fixed point, the gradient through delta only,
    and the jvp runs without autograd, so the step keeps no tangent activations (the memory of psd).
    ``checkpoint_jvp`` (fused path, exact gradient): the jvp runs block by block and each block's is recomputed
    in the backward pass, so the graph keeps the blocks' inputs instead of their primal and tangent
    activations, for one more jvp of the trunk per step.
    ``condition_share``: training for prompts (:class:`~flowzoo.objectives._flowmap.FlowMapObjective`).
    """

    def __init__(
        self,
        flow_map: FlowMapConfig = FlowMapConfig(),
        adaptive: bool = False,
        fused: bool | None = None,
        tangent_grad: bool = True,
        checkpoint_jvp: bool = True,
        condition_share: float = 0.0,
    ) -> None:
        super().__init__(flow_map, condition_share)
        for name, value in (("tangent_grad", tangent_grad), ("checkpoint_jvp", checkpoint_jvp)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        self.adaptive, self.tangent_grad, self.checkpoint_jvp = adaptive, tangent_grad, checkpoint_jvp
        self.fused = check_switch(fused)

    def fused_refusal(self, parts):
        head = parts.get("head")
        if getattr(head, "softcap", None) is not None:
            return "head", "the fused LSD residual (lsd_residual_loss) has no soft-cap"
        return super().fused_refusal(parts)

    def map_loss(self, model, state, xs, pairs, extra, x1, known):
        term = lagrangian_term(model, state, state.value(xs), pairs, not self.tangent_grad, self.checkpoint_jvp, known.hold)

        def finish():
            per_token = term.value  # (B, L)
            weight = adaptive_weight(per_token, known=known.mask) if self.adaptive else None
            return {"map": known.mean(per_token, weight), "map_residual": known.mean(per_token.detach())}

        return finish
