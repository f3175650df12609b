"""Few-step sampling with a flow map: x <- X_{t_i, t_{i+1}}(x) along 0 = t_0 < ... < t_k = 1."""

from __future__ import annotations

import torch

from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.base import Sampler, check_decode
from flowzoo.samplers.churn import check_gamma, renoise
from flowzoo.samplers.steering import Lookahead, SteerableSampling
from flowzoo.state import EmbeddedSampling


@register("sampler", "flow_map")
class FlowMapSampler(SteerableSampling, EmbeddedSampling, Sampler):
    """Flow map jumps x <- X_{t_i,t_{i+1}}(x) on k steps (uniform in the path's u-time, or ``times``), decoded from delta_{t_{k-1},1}; steps = NFE.

    ``gamma`` > 0 re-noises between steps (FMLM churn): at t_{i+1} the state is rewritten as
    (1-t) sigma eps' + t delta with eps' = sqrt(1-gamma^2) eps_hat + gamma z, where eps_hat is the noise the
    state implies given the last prediction delta and z is fresh noise; gamma = 0 is the deterministic map.
    ``fused`` (None: automatic, on CUDA) carries the state as its input embedding x W_in^T (B, L, D) with
    flowzoo.kernels, so no (B, L, V) tensor exists but the last step's logits (``flowzoo.state.EmbeddedState``).

    Reward steering (``flowzoo.samplers.steering``, on the dense state): ``guidance`` eta adds
    eta_i grad_{x_{t_i}} r(X_{t_i,1}(x_{t_i})) to every jump that does not land at 1 (``guidance_schedule``,
    ``normalize``); ``particles`` K > 1 resamples K particles per sample by exp(``tilt`` (r(X_{t_i,1}) - r_prev)).
    Each steered step evaluates the lookahead X_{t_i,1} once (reused as the last jump's prediction).
    """

    def __init__(
        self,
        steps: int = 1,
        times: list[float] | None = None,
        decode: str = "argmax",
        temperature: float = 1.0,
        gamma: float = 0.0,
        fused: bool | None = None,
        reward: dict | str | None = None,
        guidance: float | None = None,
        guidance_schedule: str = "constant",
        normalize: bool = False,
        particles: int = 1,
        tilt: float = 1.0,
    ) -> None:
        if times is not None:
            times = [float(v) for v in times]
            if len(times) < 2 or times[0] != 0.0 or times[-1] != 1.0 or any(b <= a for a, b in zip(times, times[1:])):
                raise ValueError(f"times must increase strictly from 0.0 to 1.0, got {times}")
            steps = len(times) - 1
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_gamma(gamma)
        check_decode(decode, temperature)
        self.steps, self.times, self.decode, self.temperature, self.gamma = steps, times, decode, temperature, gamma
        self.set_fused(fused)
        self.set_steering("flow_map", fused, reward, guidance, guidance_schedule, normalize, particles, tilt)

    def incompatibility(self, parts):
        reason = parts["path"].flow_map_refusal()
        return ("path", reason) if reason else super().incompatibility(parts)

    @property
    def renoises(self) -> bool:
        return self.gamma > 0

    def schedule(self, path, device=None) -> torch.Tensor:
        """The k + 1 path times 0 = t_0 < ... < t_k = 1."""
        if self.times is not None:
            return torch.tensor(self.times, device=device)
        return path.schedule(self.steps, end=1.0, device=device)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None, prompt=None, noise=None):
        """``noise``: the prior draw x_0 (num_samples, length, V) to start from (default: drawn with ``generator``),
        so a sample can be paired with its noise (:meth:`SteerableSampling.begin`)."""
        steer = self.steering
        num_samples, state, x = self.begin(model, num_samples, length, generator, prompt, noise)
        times = self.schedule(model.path, device=model.device)
        nfe, previous = self.steps, torch.zeros(num_samples, device=model.device)  # previous: r_prev of the particles
        for i in progress(range(self.steps), desc="flow_map"):
            s, t = times[i].expand(num_samples), times[i + 1].expand(num_samples)
            look = None
            if steer is not None:
                look, nfe = steer.lookahead(state, x, s, steer.gradient), nfe + 1
                if steer.particles > 1:
                    index = steer.resample(steer.tilt * (look.reward - previous), generator)
                    x, look, previous = x[index], _rows(look, index), look.reward[index]
            if look is not None and i + 1 == self.steps:
                prediction, nfe = look.prediction, nfe - 1  # the lookahead at (t_{k-1}, 1) is the last jump
            else:
                prediction = state.predict(x, t, s)  # delta_{s,t}(x) (B, L, V), or the hidden state (B, L, D) giving it
            if i + 1 == self.steps:
                break
            x = self.step(state, x, prediction, s, t, generator)
            if look is not None and steer.gradient:
                x = steer.guide(x, look, steer.eta(model.path, s, t))
        tokens, decoded = state.decode(prediction, self.decode, self.temperature, generator)
        return self.end(tokens, decoded, nfe, previous, generator)

    def step(self, state, x, prediction, s, t, generator=None):
        """One jump x <- X_{s,t}(x) (``path.flow_map``) from the prediction at (s, t), re-noised at t when gamma > 0.

        The same on the dense state and on embeddings: ``state.in_state`` gives delta_{s,t} as a point of the
        state's space (delta itself, or delta W_in^T), and the map and the re-noising are linear in (x, delta).
        """
        path = state.model.path
        delta = state.in_state(prediction)
        x = path.flow_map(x, delta, s, t).float()
        if hasattr(path, "project"):  # paths on the simplex (dirichlet) stay on it
            x = path.project(x)
        if self.gamma > 0:
            x = renoise(state, x, delta, t, self.gamma, generator)
        return x


def _rows(look: Lookahead, index: torch.Tensor) -> Lookahead:
    """The lookahead of the resampled particles."""
    return Lookahead(look.reward[index], None if look.grad is None else look.grad[index], look.prediction[index])
