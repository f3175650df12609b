"""The linear interpolant on the one-hot simplex."""

from __future__ import annotations

import torch

from flowzoo.kernels import interpolant
from flowzoo.paths.base import ProbabilityPath, expand_time
from flowzoo.registry import register


@register("path", "linear")
class LinearPath(ProbabilityPath):
    """Linear interpolant x_t = (1-t) x0 + t onehot(x1), x0 ~ N(0, sigma^2 I) in the one-hot space."""

    mean_denoiser = True

    def __init__(self, sigma: float = 1.0, t_max: float = 0.999) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max}")
        self.sigma = sigma
        self.t_max = t_max  # samplers stop here: b_t has a 1/(1-t) factor

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        return self.sigma * torch.randn(batch, length, vocab_size, generator=generator, device=device)

    def sample(self, x1, t, vocab_size, generator=None):
        # x_t = a x0 + b onehot(x1) with a = (1 - t) sigma, b = t, drawn without a separate x0 tensor on CUDA
        return interpolant(x1, (1 - t) * self.sigma, t, vocab_size, generator=generator)

    def velocity(self, x, denoised, t):
        """b_t(x) = (D_t(x) - x) / (1 - t)."""
        return (denoised - x) / (1 - expand_time(t)).clamp_min(1e-6)

    def flow_map(self, x: torch.Tensor, delta: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x) = ((1-t)/(1-s)) x + ((t-s)/(1-s)) delta_{s,t}(x); at s = 1 the map is the identity."""
        s3, t3 = expand_time(s), expand_time(t)
        denom = (1 - s3).clamp_min(1e-6)
        return ((1 - t3) / denom) * x + ((t3 - s3) / denom) * delta
