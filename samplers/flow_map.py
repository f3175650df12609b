"""Few-step sampling with a flow map: x <- X_{t_i, t_{i+1}}(x) along 0 = t_0 < ... < t_k = 1."""

from __future__ import annotations

import torch

from flowzoo.paths.base import expand_time
from flowzoo.progress import progress
from flowzoo.prompt import held
from flowzoo.registry import register
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode
from flowzoo.state import EmbeddedSampling


@register("sampler", "flow_map")
class FlowMapSampler(EmbeddedSampling, Sampler):
    """Flow map jumps x <- X_{t_i,t_{i+1}}(x) on k steps (uniform in the path's u-time, or ``times``), decoded from delta_{t_{k-1},1}; steps = NFE.

    ``gamma`` > 0 re-noises between steps (FMLM churn): at t_{i+1} the state is rewritten as
    (1-t) sigma eps' + t delta with eps' = sqrt(1-gamma^2) eps_hat + gamma z, where eps_hat is the noise the
    state implies given the last prediction delta and z is fresh noise; gamma = 0 is the deterministic map.
    ``fused`` (None: automatic, on CUDA) carries the state as its input embedding x W_in^T (B, L, D) with
    flowzoo.kernels, so no (B, L, V) tensor exists but the last step's logits (``flowzoo.state.EmbeddedState``).
    """

    def __init__(
        self,
        steps: int = 1,
        times: list[float] | None = None,
        decode: str = "argmax",
        temperature: float = 1.0,
        gamma: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        if times is not None:
            times = [float(v) for v in times]
            if len(times) < 2 or times[0] != 0.0 or times[-1] != 1.0 or any(b <= a for a, b in zip(times, times[1:])):
                raise ValueError(f"times must increase strictly from 0.0 to 1.0, got {times}")
            steps = len(times) - 1
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        check_decode(decode, temperature)
        self.steps, self.times, self.decode, self.temperature, self.gamma = steps, times, decode, temperature, gamma
        self.set_fused(fused)

    def incompatibility(self, parts):
        reason = parts["path"].flow_map_refusal()
        return ("path", reason) if reason else super().incompatibility(parts)

    def schedule(self, path, device=None) -> torch.Tensor:
        """The k + 1 path times 0 = t_0 < ... < t_k = 1."""
        if self.times is not None:
            return torch.tensor(self.times, device=device)
        return path.schedule(self.steps, end=1.0, device=device)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        state = held(self.state(model), prompt)  # dense (B, L, V) or embedded (B, L, D): the one place the kernels are chosen
        x = state.prior(num_samples, length, generator)
        times = self.schedule(model.path, device=model.device)
        for i in progress(range(self.steps), desc="flow_map"):
            s, t = times[i].expand(num_samples), times[i + 1].expand(num_samples)
            prediction = state.predict(x, t, s)  # delta_{s,t}(x) (B, L, V), or the hidden state (B, L, D) giving it
            if i + 1 == self.steps:
                break
            x = self.step(state, x, prediction, s, t, generator)
        tokens, decoded = state.decode(prediction, self.decode, self.temperature, generator)
        return SampleOutput(tokens, nfe=self.steps, prediction=decoded)

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
            x = self._renoise(x, delta, t, state.fresh_noise(x, (1 - t) * getattr(path, "sigma", 1.0) * self.gamma, generator))
        return x

    def _renoise(self, x, delta, t, fresh):
        """Swap a share gamma of the implied noise for fresh noise, keeping the state on the path at t.

        x = (1-t) sigma eps_hat + t delta becomes (1-t) sigma (sqrt(1-gamma^2) eps_hat + gamma z) + t delta
        = sqrt(1-gamma^2) (x - t delta) + t delta + fresh with fresh = (1-t) sigma gamma z: linear in (x, delta,
        z), so the same on states (B, L, V) and on their embeddings (B, L, D).
        """
        t3 = expand_time(t)
        return (1 - self.gamma**2) ** 0.5 * (x - t3 * delta) + t3 * delta + fresh
