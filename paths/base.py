"""The probability-path contract."""

from __future__ import annotations

import torch
from torch import nn

from flowzoo.registry import Component


def expand_time(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1) to broadcast against states (B, L, V)."""
    return t.reshape(-1, 1, 1)


class ProbabilityPath(Component, nn.Module):
    """A path p_t from noise (t = 0) to data (t = 1) over per-position states (B, L, V).

    ``state`` is ``"continuous"`` for paths on (or around) the simplex and ``"discrete"``
    for paths over token ids (masked diffusion). ``mean_denoiser`` says whether the flow map
    may be written X_{s,t}(x) = ((1-t)/(1-s)) x + ((t-s)/(1-s)) delta_{s,t}(x) (true for the
    linear interpolant, where b_t(x) = (D_t(x) - x)/(1-t)).
    """

    state: str = "continuous"
    mean_denoiser: bool = False
    extra_tokens: int = 0  # input symbols beyond the vocabulary (e.g. [MASK])

    def sample_prior(self, batch: int, length: int, vocab_size: int, generator=None, device=None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, x1: torch.Tensor, t: torch.Tensor, vocab_size: int, generator=None) -> torch.Tensor:
        """Draw x_t ~ p_t(. | x1) for clean ids x1 (B, L) at times t (B,)."""
        raise NotImplementedError

    def velocity(self, x: torch.Tensor, denoised: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ODE velocity b_t(x) given the denoiser output D_t(x) (B, L, V)."""
        raise NotImplementedError

    # Time reparameterisation hooks: objectives draw u ~ U[0, 1] and samplers space steps
    # uniformly in u; the path maps u to its own time and tells the network what to see.
    def time_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def schedule(self, steps: int, end: float = 1.0, device=None) -> torch.Tensor:
        """steps + 1 path times from 0 to ``end`` spaced uniformly in u."""
        return self.time_from_uniform(torch.linspace(0.0, end, steps + 1, device=device))
