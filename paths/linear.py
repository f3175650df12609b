"""The linear interpolant on the one-hot simplex."""

from __future__ import annotations

import numpy as np
import torch

from flowzoo.kernels import interpolant
from flowzoo.paths.base import ProbabilityPath, expand_time
from flowzoo.registry import register
from flowzoo.validation import check_choice, check_times, check_tokens, on_host


@register("path", "linear")
class LinearPath(ProbabilityPath):
    """Linear interpolant x_t = (1-t) x0 + t onehot(x1), x0 ~ N(0, sigma^2 I) in the one-hot space.

    ``time="tau"`` (FLM): times are drawn and steps spaced uniformly in, and the network sees,
    tau(t) = K/(K-1) (E_z[Phi(z + t/((1-t) sigma))^(K-1)] - 1/K), the rescaled probability that
    argmax(x_t) is the clean token (K = vocabulary size, bound by the model or given as ``vocab_size``).
    """

    mean_denoiser = True
    TIMES = ("linear", "tau")

    def __init__(self, sigma: float = 1.0, t_max: float = 0.999, time: str = "linear", vocab_size: int | None = None) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max}")
        check_choice(time, self.TIMES, "time")
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.sigma = sigma
        self.t_max = t_max  # samplers stop here: b_t has a 1/(1-t) factor
        self.time, self.vocab_size = time, vocab_size
        self._tau: dict = {}  # device -> (t grid, tau values), built on first use

    # --- FLM time reparameterisation ------------------------------------------------------
    def bind_vocab(self, vocab_size: int) -> None:
        """Learn K from the model (called by FlowLM); an explicit ``vocab_size`` argument wins."""
        if self.vocab_size is None:
            self.vocab_size = vocab_size

    def tau_table(self, device=None, points: int = 4097, nodes: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
        """(t grid, tau(t)) by Gauss-Hermite quadrature in float64, monotone, tau(0) = 0, tau(1) = 1."""
        key = str(device)
        if key not in self._tau:
            if self.vocab_size is None:
                raise ValueError("LinearPath(time='tau') needs the vocabulary size: build it inside a FlowLM or pass vocab_size")
            K = self.vocab_size
            z, w = np.polynomial.hermite_e.hermegauss(nodes)  # E_z[f] = sum w f(z) / sqrt(2 pi)
            z, w = torch.tensor(z), torch.tensor(w) / np.sqrt(2 * np.pi)
            t = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
            shift = t[1:-1] / ((1 - t[1:-1]) * self.sigma)
            log_phi = torch.special.log_ndtr(z[None, :] + shift[:, None])  # (N, nodes)
            p = (torch.exp((K - 1) * log_phi) * w).sum(-1)
            tau = torch.cat([torch.zeros(1, dtype=torch.float64), (K / (K - 1)) * (p - 1 / K), torch.ones(1, dtype=torch.float64)])
            tau = torch.cummax(tau.clamp(0.0, 1.0), 0).values
            tau = tau + torch.linspace(0.0, 1e-9, points, dtype=torch.float64)  # strictly increasing
            tau = (tau - tau[0]) / (tau[-1] - tau[0])
            self._tau[key] = (t.to(device), tau.to(device))  # float64: tau is flat near t = 1
        return self._tau[key]

    def time_from_uniform(self, u):
        if self.time == "linear":
            return u
        grid, tau = self.tau_table(u.device)
        return _interp(u, tau, grid)

    def network_time(self, t):
        if self.time == "linear":
            return t
        grid, tau = self.tau_table(t.device)
        return _interp(t, grid, tau)

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        return self.sigma * torch.randn(batch, length, vocab_size, generator=generator, device=device)

    def sample(self, x1, t, vocab_size, generator=None):
        check_tokens(x1, vocab_size, values=on_host(x1))
        check_times(t, batch=x1.shape[0], values=on_host(t))
        # x_t = a x0 + b onehot(x1) with a = (1 - t) sigma, b = t, drawn without a separate x0 tensor on CUDA
        return interpolant(x1, (1 - t) * self.sigma, t, vocab_size, generator=generator)

    def velocity(self, x, denoised, t):
        """b_t(x) = (D_t(x) - x) / (1 - t)."""
        if denoised.shape != x.shape:
            raise ValueError(f"the denoiser output must have the state's shape {tuple(x.shape)}, got {tuple(denoised.shape)}")
        return (denoised - x) / (1 - expand_time(t)).clamp_min(1e-6)

    def denoiser(self, x, velocity, t):
        """D_t(x) = x + (1 - t) b_t(x), the inverse of :meth:`velocity`."""
        if velocity.shape != x.shape:
            raise ValueError(f"the velocity must have the state's shape {tuple(x.shape)}, got {tuple(velocity.shape)}")
        return x + (1 - expand_time(t)).clamp_min(1e-6) * velocity


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (differentiable in x, for jvp)."""
    xd = x.clamp(0.0, 1.0).to(xp.dtype)
    idx = torch.searchsorted(xp, xd.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = (xd - x0) / torch.where(x1 > x0, x1 - x0, torch.ones_like(x0))
    out = f0 + w * (f1 - f0)
    out = torch.where(xd >= 1, torch.ones_like(out), torch.where(xd <= 0, torch.zeros_like(out), out))  # exact ends
    return out.to(x.dtype)
