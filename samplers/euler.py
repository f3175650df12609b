"""Euler integration of the probability-flow ODE."""

from __future__ import annotations

import torch

from flowzoo.objectives._flowmap import flow_map
from flowzoo.objectives._fused import delta_embedding, hidden
from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers._embedded import EmbeddedSampling, decode_hidden, prior_embedding
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode, decode_tokens


@register("sampler", "euler")
class EulerSampler(EmbeddedSampling, Sampler):
    """Euler ODE: x <- x + (t_{i+1} - t_i) b_{t_i}(x) from t = 0, then decode from D at the last time (steps = NFE).

    On the linear path an Euler step is the flow map on the diagonal, x <- a x + b D_t(x) with
    (a, b) = ((1-t')/(1-t), (t'-t)/(1-t)); ``fused`` (None: automatic, on CUDA) then carries x as its input
    embedding (B, L, D) with flowzoo.kernels (``flowzoo.samplers._embedded``).
    """

    def __init__(self, steps: int = 128, decode: str = "argmax", temperature: float = 1.0, fused: bool | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_decode(decode, temperature)
        self.steps, self.decode, self.temperature = steps, decode, temperature
        self.set_fused(fused)

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "Euler integration needs a continuous path"
        return super().incompatibility(parts)

    def schedule(self, path, device=None) -> torch.Tensor:
        """steps evaluations at 0 = t_0 < ... < t_{steps-1} = t_max; the last one is decoded, not integrated."""
        return path.schedule(max(self.steps - 1, 1), end=getattr(path, "t_max", 1.0), device=device)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None):
        if self.use_fused(model):
            return self._sample_embedded(model, num_samples, length, generator)
        path = model.path
        x = path.sample_prior(num_samples, length, model.vocab_size, generator=generator, device=model.device)
        times = self.schedule(path, device=model.device)
        for i in progress(range(self.steps), desc="euler"):
            t = times[i].expand(num_samples)
            denoised = model.denoise(x, t)  # (B, L, V)
            if i + 1 < self.steps:
                x = x + (times[i + 1] - times[i]) * path.velocity(x, denoised, t)
                if hasattr(path, "project"):  # paths on the simplex (dirichlet) stay on it
                    x = path.project(x)
        return SampleOutput(decode_tokens(denoised, self.decode, self.temperature, generator), nfe=self.steps, prediction=denoised)

    def _sample_embedded(self, model, num_samples, length, generator):
        """The same steps on e = x W_in^T (B, L, D): e <- a e + b D_t W_in^T, D_t never materialised."""
        _, e = prior_embedding(model, num_samples, length, generator)
        times = self.schedule(model.path, device=model.device)
        for i in progress(range(self.steps), desc="euler"):
            t = times[i].expand(num_samples)
            h = hidden(model, e, t, t, embedded=True)  # (B, L, D)
            if i + 1 < self.steps:  # the Euler step on the linear path is the map X_{t,t'} with delta = D_t
                e = flow_map(model.path, e, delta_embedding(model, h), t, times[i + 1].expand(num_samples))
        return SampleOutput(decode_hidden(model, h, self.decode, self.temperature, generator), nfe=self.steps)


@register("sampler", "marginal")
class MarginalSampler(Sampler):
    """Each position drawn independently from the denoiser's marginal D_0(x0) at t = 0 (ignores dependencies)."""

    def __init__(self, temperature: float = 1.0) -> None:
        check_decode("sample", temperature)
        self.temperature = temperature

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "the marginal sampler reads the denoiser of a continuous path at t = 0"
        return None

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None):
        x = model.path.sample_prior(num_samples, length, model.vocab_size, generator=generator, device=model.device)
        t = torch.zeros(num_samples, device=model.device)
        return SampleOutput(decode_tokens(model.denoise(x, t), "sample", self.temperature, generator), nfe=1)
