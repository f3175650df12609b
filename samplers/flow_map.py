"""Few-step sampling with a flow map: x <- X_{t_i, t_{i+1}}(x) along 0 = t_0 < ... < t_k = 1."""

from __future__ import annotations

import torch

from flowzoo.objectives._fused import delta_embedding, hidden
from flowzoo.objectives._flowmap import check_flow_map_parts, flow_map
from flowzoo.paths.base import expand_time
from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers._embedded import EmbeddedSampling, decode_hidden, fresh_noise_embedding, prior_embedding
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode, decode_tokens


@register("sampler", "flow_map")
class FlowMapSampler(EmbeddedSampling, Sampler):
    """Flow map jumps x <- X_{t_i,t_{i+1}}(x) on k steps (uniform in the path's u-time, or ``times``), decoded from delta_{t_{k-1},1}; steps = NFE.

    ``gamma`` > 0 re-noises between steps (FMLM churn): at t_{i+1} the state is rewritten as
    (1-t) sigma eps' + t delta with eps' = sqrt(1-gamma^2) eps_hat + gamma z, where eps_hat is the noise the
    state implies given the last prediction delta and z is fresh noise; gamma = 0 is the deterministic map.
    ``fused`` (None: automatic, on CUDA) carries the state as its input embedding x W_in^T (B, L, D) with
    flowzoo.kernels, so no (B, L, V) tensor exists but the last step's logits (``flowzoo.samplers._embedded``).
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
        return check_flow_map_parts(parts) or super().incompatibility(parts)

    def schedule(self, path, device=None) -> torch.Tensor:
        """The k + 1 path times 0 = t_0 < ... < t_k = 1."""
        if self.times is not None:
            return torch.tensor(self.times, device=device)
        return path.schedule(self.steps, end=1.0, device=device)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None):
        if self.use_fused(model):
            return self._sample_embedded(model, num_samples, length, generator)
        path = model.path
        x = path.sample_prior(num_samples, length, model.vocab_size, generator=generator, device=model.device)
        times = self.schedule(path, device=model.device)
        for i in progress(range(self.steps), desc="flow_map"):
            s, t = times[i].expand(num_samples), times[i + 1].expand(num_samples)
            delta = model.head.denoise(model.logits(x, t, s))  # delta_{s,t}(x), (B, L, V)
            if i + 1 == self.steps:
                break
            x = flow_map(path, x, delta, s, t).float()
            if hasattr(path, "project"):  # paths on the simplex (dirichlet) stay on it
                x = path.project(x)
            if self.gamma > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = self._renoise(x, delta, t, expand_time((1 - t) * getattr(path, "sigma", 1.0) * self.gamma) * z)
        return SampleOutput(decode_tokens(delta, self.decode, self.temperature, generator), nfe=self.steps, prediction=delta)

    def _sample_embedded(self, model, num_samples, length, generator):
        """The same steps on e = x W_in^T (B, L, D): e <- a e + b delta W_in^T, delta never materialised."""
        ids, e = prior_embedding(model, num_samples, length, generator)
        times = self.schedule(model.path, device=model.device)
        for i in progress(range(self.steps), desc="flow_map"):
            s, t = times[i].expand(num_samples), times[i + 1].expand(num_samples)
            h = hidden(model, e, t, s, embedded=True)  # (B, L, D)
            if i + 1 == self.steps:
                break
            d = delta_embedding(model, h)  # delta_{s,t} W_in^T
            e = flow_map(model.path, e, d, s, t)  # X_{s,t} W_in^T: the map is linear in the state
            if self.gamma > 0:
                e = self._renoise(e, d, t, fresh_noise_embedding(model, ids, (1 - t) * model.path.sigma * self.gamma, generator))
        return SampleOutput(decode_hidden(model, h, self.decode, self.temperature, generator), nfe=self.steps)

    def _renoise(self, x, delta, t, fresh):
        """Swap a share gamma of the implied noise for fresh noise, keeping the state on the path at t.

        x = (1-t) sigma eps_hat + t delta becomes (1-t) sigma (sqrt(1-gamma^2) eps_hat + gamma z) + t delta
        = sqrt(1-gamma^2) (x - t delta) + t delta + fresh with fresh = (1-t) sigma gamma z: linear in (x, delta,
        z), so the same on states (B, L, V) and on their embeddings (B, L, D).
        """
        t3 = expand_time(t)
        return (1 - self.gamma**2) ** 0.5 * (x - t3 * delta) + t3 * delta + fresh
