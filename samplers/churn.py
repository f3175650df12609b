"""Churn: re-noise the linear path's state around the last prediction (FMLM's sampler; DDIM's eta on this path)."""

from __future__ import annotations

import torch

from flowzoo.paths.base import expand_time


def check_gamma(gamma: float) -> None:
    """``gamma`` is the share of fresh noise, in [0, 1]."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")


def renoise(state, x: torch.Tensor, delta: torch.Tensor, t: torch.Tensor, gamma: float, generator=None) -> torch.Tensor:
    """Swap a share gamma of the noise that x implies for fresh noise, keeping the state on the path at t.

    On the linear path x = (1-t) sigma eps_hat + t delta (eps_hat: the noise x implies given the prediction
    delta) becomes (1-t) sigma (sqrt(1-gamma^2) eps_hat + gamma z) + t delta with z ~ N(0, I), which is
    sqrt(1-gamma^2) (x - t delta) + t delta + (1-t) sigma gamma z: linear in (x, delta, z), so the same on the
    dense state (B, L, V) and on its embedding (B, L, D) (``state.in_state(delta)``, ``state.fresh_noise``).
    gamma = 0 returns x; gamma = 1 draws the state afresh around delta.
    """
    t3 = expand_time(t)
    sigma = getattr(state.model.path, "sigma", 1.0)
    fresh = state.fresh_noise(x, (1 - t) * sigma * gamma, generator)
    return (1 - gamma**2) ** 0.5 * (x - t3 * delta) + t3 * delta + fresh
