"""Absorbing-state (masked) discrete diffusion with the log-linear schedule (MDLM, Sahoo et al., 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowzoo.paths.base import ProbabilityPath
from flowzoo.registry import register


@register("path", "masked")
class MaskedPath(ProbabilityPath):
    """Each token is kept with probability alpha(t) and replaced by [MASK] (id V) otherwise.

    Flowzoo time runs from noise (t = 0) to data (t = 1); MDLM's time is tau = 1 - t. The log-linear
    schedule sigma(tau) = -log(1 - (1 - eps) tau) gives alpha(t) = exp(-sigma) = 1 - (1 - eps)(1 - t).
    ``time_conditioning=False`` (MDLM's default) feeds the network a constant time; True feeds it
    sigma(tau) / sigma(1), a monotone rescaling of MDLM's sigma conditioning into [0, 1].
    """

    state = "discrete"
    extra_tokens = 1  # the [MASK] input symbol, id = vocab_size
    mean_denoiser = False

    def __init__(self, eps: float = 1e-3, time_conditioning: bool = False) -> None:
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.eps, self.time_conditioning = eps, time_conditioning
        self.t_max = 1.0 - eps  # MDLM trains and samples MDLM time in [eps, 1]: flowzoo t in [0, 1 - eps]

    # --- schedule -------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """P(token kept at time t) = 1 - (1 - eps)(1 - t)."""
        return 1 - (1 - self.eps) * (1 - t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """MDLM's total noise sigma = -log alpha(t)."""
        return -torch.log1p(-(1 - self.eps) * (1 - t))

    def nelbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'(tau) / (1 - alpha) in MDLM time = sigma'/expm1(sigma) = 1/(1 - t) for the log-linear schedule."""
        return 1.0 / (1 - t).clamp_min(1e-12)

    def network_time(self, t):
        if not self.time_conditioning:
            return torch.zeros_like(t)
        return self.sigma(t) / -math.log(self.eps)

    # --- states ---------------------------------------------------------------------------
    def mask_id(self, vocab_size: int) -> int:
        return vocab_size

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        """All [MASK]: (B, L) long."""
        return torch.full((batch, length), self.mask_id(vocab_size), dtype=torch.long, device=device)

    def sample(self, x1, t, vocab_size, generator=None):
        """x_t: x1 where u < alpha(t), [MASK] elsewhere; (B, L) long."""
        u = torch.rand(x1.shape, generator=generator, device=x1.device)
        keep = u < self.alpha(t).reshape(-1, 1)
        return torch.where(keep, x1, torch.full_like(x1, self.mask_id(vocab_size)))

    def velocity(self, x, denoised, t):
        raise NotImplementedError("the masked path is a jump process with no ODE velocity; sample it with the 'ancestral' sampler")

    def schedule(self, steps: int, end: float = 1.0, device=None) -> torch.Tensor:
        """steps + 1 times from 0 to ``end`` (uniform in t, as MDLM's linspace(1, eps) in its time)."""
        return torch.linspace(0.0, end, steps + 1, device=device)


def subs_log_probs(log_probs: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation: log p_theta(x0 | x_t), (B, L, V) over the V real tokens.

    The network's output has no [MASK] column (it has zero probability); where x_t is not [MASK]
    the distribution is the point mass on x_t (carry-over unmasking): log-prob 0 there, -inf elsewhere.
    """
    unmasked = xt != mask_id  # (B, L)
    carried = F.one_hot(xt.clamp_max(log_probs.shape[-1] - 1), log_probs.shape[-1]).bool()
    point = torch.where(carried, torch.zeros_like(log_probs), torch.full_like(log_probs, -math.inf))
    return torch.where(unmasked[..., None], point, log_probs)
