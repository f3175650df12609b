"""Churn: re-noise the linear path's state around the last prediction (FMLM's sampler; DDIM's eta on this path)."""

from __future__ import annotations

import math

import torch

from flowzoo.paths.base import expand_time


def check_gamma(gamma: float) -> None:
    """``gamma`` is the share of fresh noise, in [0, 1]."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")


def check_rate(rate: float) -> None:
    """``churn_rate`` is a rate per unit of the path's uniform time, finite and >= 0."""
    if not (math.isfinite(rate) and rate >= 0.0):
        raise ValueError(f"churn_rate must be a finite number >= 0, got {rate}")


def gamma_from_rate(rate: float, du: float) -> float:
    """The share of fresh noise for one step of length du (uniform time) at churn rate lambda:
    gamma = sqrt(1 - exp(-2 lambda du)).

    Each step keeps sqrt(1-gamma^2) = exp(-lambda du) of the implied noise eps_hat, so over a stretch Delta u it keeps
    exp(-lambda Delta u) whatever the number of steps (an Ornstein-Uhlenbeck process on eps_hat at rate lambda; a
    fixed gamma per step instead churns more the more steps there are). gamma = 0.3 at 128 linspace steps
    (du = 0.999 / 127) is lambda = -ln(sqrt(0.91)) / du = 6.0.
    """
    return math.sqrt(-math.expm1(-2.0 * rate * du))


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
