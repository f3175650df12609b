"""Flow matching in denoiser form: the head's loss at random times."""

from __future__ import annotations

import torch
from torch import nn

from flowzoo.backbones.dit import timestep_embedding
from flowzoo.objectives.base import Objective
from flowzoo.prompt import ConditionShare, unknown_mean
from flowzoo.registry import register
from flowzoo.state import FusedSwitch, check_switch, new_state, self_condition_feedback, self_conditioned
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice

LOSS_WEIGHTINGS = ("none", "velocity", "learned")
VELOCITY_WEIGHT_FLOOR = 0.1  # velocity weighting: w(t) = 1 / max(1 - t, 0.1)^2 <= 100


class LearnedLossWeight(nn.Module):
    """FLM's / EDM2's learned weighting: w(u) = MLP(sinusoid(u)) (B,), its last layer zero (w = 0 at the start)."""

    def __init__(self, freq_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(u, self.freq_dim)).squeeze(-1)


@register("objective", "flow_matching")
class FlowMatching(ConditionShare, FusedSwitch, Objective):
    """E_{t, x0, x1} [ loss_head(D_t(x_t), x1) ] per token; with the categorical head this is
    the cross-entropy L_CE = -E sum_l log D_t(x_t)^l . x1^l, with the Gaussian head the MSE.

    ``fused`` (None: automatic) computes it on the embedded state (``flowzoo.state``) with flowzoo.kernels on the
    linear path and categorical head: x_t W_in^T by noisy_embedding (x_t never built) and the CE from the trunk's
    hidden state through the output projection (no logits tensor).

    ``condition_share`` > 0 trains for prompts (docs/conditional.md): that share of the rows knows a clean prefix
    or everything around one hole (flowzoo.prompt.condition_mask), presented at its clean one-hot as sampling's
    ``hold="clean"`` does, and the loss is the mean over the unknown positions only.

    ``loss_weighting`` weights the per-token loss l_t over time: ``none`` (1), ``velocity``
    w(t) = 1 / max(1 - t, 0.1)^2 (the weight that turns an error on D into one on the velocity
    b = (D - x) / (1 - t), capped at 100), ``learned``: exp(-w(u)) l_t + w(u) with w = MLP(sinusoid(u)) of the
    uniform time, trained with the model (FLM's learnable weighting, EDM2's uncertainty weighting). The unweighted
    loss is logged as ``ce``.

    With a self-conditioning backbone (``--model.backbone.init_args.self_condition=true``, CDCD / Plaid) a share
    ``self_condition_share`` of the rows is trained on a second pass that reads the first pass's detached prediction,
    D^ = sg[D_t(x_t)], loss_head(D_t(x_t | D^), x1); the other rows read D^ = 0. It runs on the dense state.
    """

    needs_linear_path = True
    passes_self_condition = True

    def __init__(self, time_sampling: str = "uniform", fused: bool | None = None, condition_share: float = 0.0,
                 loss_weighting: str = "none", self_condition_share: float = 0.5) -> None:
        super().__init__()
        self.set_condition_share(condition_share)
        if not 0.0 <= self_condition_share <= 1.0:
            raise ValueError(f"self_condition_share must lie in [0, 1], got {self_condition_share}")
        check_choice(loss_weighting, LOSS_WEIGHTINGS, "loss_weighting")
        self.self_condition_share, self.loss_weighting = self_condition_share, loss_weighting
        if loss_weighting == "learned":
            self.loss_weight = LearnedLossWeight()
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        self.time_sampling = time_sampling
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "flow matching needs a continuous path on the simplex"
        return self.fused_incompatibility(parts)

    def forward(self, model, x1):
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = model.path.time_from_uniform(u)
        state = new_state(model, self.use_fused(model))  # dense (B, L, V) or embedded (B, L, D): the seam
        known = self.known_positions(x1)  # (B, L), None without condition_share
        x = state.noisy(x1, t, known)  # x_t, the known positions at their clean one-hot
        previous = self.previous_prediction(model, state, x, t)  # self-conditioning's D^, or None
        term = state.head_loss(x, t, None, x1, self_cond=previous)  # loss_head(D_t(x_t), x1) per token
        state.resolve()
        per_token = term.value  # (B, L)
        mean = (lambda v: v.mean()) if known is None else (lambda v: unknown_mean(v, known))
        if self.loss_weighting == "none":
            return {"loss": mean(per_token)}
        return {"loss": mean(self.weighted(per_token, t, u)), "ce": mean(per_token).detach()}

    def previous_prediction(self, model, state, x, t) -> torch.Tensor | None:
        """Self-conditioning: sg[D_t(x_t)] (B, L, V) from a first pass without it, zero on the rows outside the share
        ``self_condition_share``; None for a backbone without self-conditioning."""
        if not self_conditioned(model):
            return None
        x = state.value(x)
        with torch.no_grad():
            first = state.predict(x, t)  # (B, L, V)
        return self_condition_feedback(first, self.self_condition_share)

    def weighted(self, per_token: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The per-token loss (B, L) under ``loss_weighting`` (``velocity`` or ``learned``)."""
        if self.loss_weighting == "velocity":
            w = (1 - t).clamp_min(VELOCITY_WEIGHT_FLOOR).pow(-2)  # (B,)
            return w[:, None].to(per_token.dtype) * per_token
        w = self.loss_weight(u)[:, None].to(per_token.dtype)  # (B, 1)
        return torch.exp(-w) * per_token + w
