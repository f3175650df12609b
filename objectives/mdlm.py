"""The continuous-time NELBO of masked diffusion with the SUBS parameterisation (MDLM)."""

from __future__ import annotations

import math

import torch

from flowzoo.objectives.base import Objective
from flowzoo.paths.masked import MaskedPath, subs_log_probs
from flowzoo.registry import register
from flowzoo.state import FusedSwitch, check_switch, hidden, lm_cross_entropy
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice


def mdlm_nelbo(log_probs: torch.Tensor, x1: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, path: MaskedPath) -> torch.Tensor:
    """Per-token NELBO (B, L): w(t) * -log p_theta(x1 | x_t) with w = -alpha'/(1-alpha) = 1/(1-t).

    ``log_probs`` (B, L, V) is the network's log-softmax over real tokens; SUBS makes the term zero
    at unmasked positions (carry-over), so only masked positions contribute.
    """
    lp = subs_log_probs(log_probs, xt, path.mask_id(log_probs.shape[-1]))
    nll = -lp.gather(-1, x1[..., None]).squeeze(-1)  # (B, L); 0 where x_t = x1 is carried over
    masked = xt == path.mask_id(log_probs.shape[-1])
    nll = torch.where(masked, nll, torch.zeros_like(nll))
    return path.nelbo_weight(t)[:, None] * nll


def fused_mdlm_nelbo(model, x1: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:func:`mdlm_nelbo` (B, L) from the trunk's hidden state: linear_cross_entropy (flowzoo.kernels) on the
    masked rows only, so neither the logits nor the log-probabilities exist as (B, L, V) tensors."""
    h = hidden(model, xt, t)  # (B, L, D)
    masked = xt == model.path.mask_id(model.vocab_size)
    nll = torch.zeros(x1.shape, device=x1.device, dtype=torch.float32)
    if masked.any():
        nll = nll.masked_scatter(masked, lm_cross_entropy(model, h[masked], x1[masked]))
    return model.path.nelbo_weight(t)[:, None] * nll


@register("objective", "mdlm")
class MDLM(FusedSwitch, Objective):
    """NELBO = E_{t ~ U[0, 1-eps]} (1/(1-t)) sum_l 1[x_t^l = MASK] (-log p_theta(x1^l | x_t)), per token.

    Times are drawn antithetically (``stratified``, MDLM's ``antithetic_sampling``). Logged: ``loss``
    (the NELBO in nats per token) and ``ppl_bound`` = exp(loss), an upper bound on the perplexity
    (per batch; exp of the epoch-mean ``val/loss`` is the tighter figure). ``fused`` (None: automatic)
    computes the cross-entropy with flowzoo.kernels (no (B, L, V) logits) for a dit backbone and categorical head.
    """

    def __init__(self, time_sampling: str = "stratified", fused: bool | None = None) -> None:
        super().__init__()
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        self.time_sampling = time_sampling
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        if not isinstance(parts["path"], MaskedPath):
            return "path", "the MDLM NELBO needs the absorbing-state path (--model.path=masked)"
        if not getattr(parts["head"], "on_simplex", False) or not hasattr(parts["head"], "log_probs"):
            return "head", "the NELBO needs a categorical head (log-probabilities over tokens)"
        backbone = parts.get("backbone")
        if backbone is not None and getattr(backbone, "causal", False):
            return "backbone", "masked diffusion denoises all positions at once: use a bidirectional backbone (causal=false)"
        return self.fused_incompatibility(parts)

    def forward(self, model, x1):
        path = model.path
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = u * path.t_max  # MDLM time 1 - t in [eps, 1]
        xt = path.sample(x1, t, model.vocab_size)  # (B, L) ids, [MASK] = V
        if self.use_fused(model):
            loss = fused_mdlm_nelbo(model, x1, xt, t).mean()
        else:
            log_probs = model.head.log_probs(model.logits(xt, t))  # (B, L, V)
            loss = mdlm_nelbo(log_probs, x1, xt, t, path).mean()
        ppl = torch.exp(loss.detach()) if loss.detach() < 700 else torch.tensor(math.inf, device=loss.device)
        return {"loss": loss, "ppl_bound": ppl, "masked_share": (xt == model.vocab_size).float().mean()}
