"""The probability-path contract."""

from __future__ import annotations

import torch
from torch import nn

from flowzoo.registry import Component
from flowzoo.validation import check_times, on_host


def expand_time(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1) to broadcast against states (B, L, V)."""
    return t.reshape(-1, 1, 1)


class ProbabilityPath(Component, nn.Module):
    """A path p_t from noise (t = 0) to data (t = 1) over per-position states (B, L, V).

    ``state`` is ``"continuous"`` for paths on (or around) the simplex and ``"discrete"``
    for paths over token ids (masked diffusion). ``mean_denoiser`` says whether the flow map
    may be written X_{s,t}(x) = ((1-t)/(1-s)) x + ((t-s)/(1-s)) delta_{s,t}(x) (true for the
    linear interpolant, where b_t(x) = (D_t(x) - x)/(1-t)).

    The path owns its flow-map math, which objectives and samplers call: :meth:`flow_map`
    (X_{s,t} from the network's prediction at (s, t)), :meth:`map_weights` (the mean-denoiser
    form's coefficients), :meth:`semigroup_weight` (how two maps compose) and
    :meth:`flow_map_refusal` (whether the path carries a flow map at all).
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

    def denoiser(self, x: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser output D_t(x) whose ODE velocity is ``velocity`` (B, L, V): the inverse of :meth:`velocity`
        in D, so that velocity(x, denoiser(x, b, t), t) = b and denoiser(x, velocity(x, D, t), t) = D."""
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

    # --- flow maps ------------------------------------------------------------------------
    def flow_map_refusal(self) -> str | None:
        """Why this path cannot carry a flow map X_{s,t}, or None when it can.

        A flow map needs a continuous state that moves along an ODE dx/dt = b_t(x): the linear and Dirichlet
        paths have one, masked diffusion (token ids) does not.

        >>> from flowzoo.paths import LinearPath
        >>> LinearPath().flow_map_refusal() is None
        True
        """
        if self.state != "continuous":
            return "flow maps need a continuous path (a state that moves along an ODE)"
        return None

    @staticmethod
    def map_weights(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = ((1-t)/(1-s), (t-s)/(1-s)), the coefficients of X_{s,t}(x) = a x + b delta_{s,t}(x).

        a + b = 1 and both are finite for all s <= t in [0, 1]: at s = 1 (so t = 1) the map is the identity,
        a = 1, b = 0, and the division is guarded so that neither the value nor its gradient is NaN.

        >>> a, b = ProbabilityPath.map_weights(torch.tensor([0.5]), torch.tensor([0.75]))
        >>> a.item(), b.item()
        (0.5, 0.5)
        """
        one_minus_s = 1 - s
        safe = torch.where(one_minus_s > 0, one_minus_s, torch.ones_like(one_minus_s))
        b = torch.where(one_minus_s > 0, (t - s) / safe, torch.zeros_like(s)).clamp(0.0, 1.0)
        return 1 - b, b

    @staticmethod
    def semigroup_weight(s: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """gamma = (1-t)(u-s) / ((1-u)(t-s)), the weight of the semigroup rule X_{s,t} = X_{u,t} o X_{s,u}
        in mean-denoiser form: delta_{s,t}(x) = gamma delta_{s,u}(x) + (1-gamma) delta_{u,t}(X_{s,u}(x)).

        Where the ratio is 0/0 (s = u = t, or u = t = 1) gamma is 1: the target is then delta_{s,u} = delta_{s,t}.

        >>> ProbabilityPath.semigroup_weight(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([1.0])).item()
        0.0
        >>> round(ProbabilityPath.semigroup_weight(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([0.75])).item(), 4)
        0.3333
        """
        num = (1 - t) * (u - s)
        den = (1 - u) * (t - s)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        return torch.where(den > 0, num / safe, torch.ones_like(den)).clamp(0.0, 1.0)

    def flow_map(self, x: torch.Tensor, prediction: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x) from the head's prediction at (s, t), times s <= t (B,), states (B, L, V).

        Mean-denoiser paths (``mean_denoiser``; the prediction is delta_{s,t}(x), with delta_{t,t} = D_t):

            X_{s,t}(x) = ((1-t)/(1-s)) x + ((t-s)/(1-s)) delta_{s,t}(x)      (see :meth:`map_weights`)

        other paths, the secant form with the average velocity v_{s,t} = velocity(x, prediction, s):

            X_{s,t}(x) = x + (t-s) v_{s,t}(x).

        The mean-denoiser form is linear in (x, delta), so it applies unchanged to input embeddings
        x W_in^T and delta W_in^T (B, L, D) (``flowzoo.state``). X_{s,s} = x; on the linear path X_{s,1} = delta.

        >>> from flowzoo.paths import LinearPath
        >>> x, delta = torch.zeros(1, 1, 2), torch.tensor([[[1.0, 0.0]]])
        >>> LinearPath().flow_map(x, delta, torch.tensor([0.0]), torch.tensor([0.5])).tolist()
        [[[0.5, 0.0]]]
        """
        check_times(t, s, batch=x.shape[0], values=on_host(x))
        if prediction.shape != x.shape:
            raise ValueError(f"the prediction at (s, t) must have the state's shape {tuple(x.shape)}, got {tuple(prediction.shape)}")
        if self.mean_denoiser:
            a, b = self.map_weights(s, t)
            return expand_time(a) * x + expand_time(b) * prediction
        return x + expand_time(t - s) * self.velocity(x, prediction, s)
