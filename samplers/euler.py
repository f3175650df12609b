"""Euler integration of the probability-flow ODE."""

from __future__ import annotations

import torch

from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode, decode_tokens


@register("sampler", "euler")
class EulerSampler(Sampler):
    """Euler ODE: x <- x + (t_{i+1} - t_i) b_{t_i}(x) from t = 0, then decode from D at the last time (steps = NFE)."""

    def __init__(self, steps: int = 128, decode: str = "argmax", temperature: float = 1.0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_decode(decode, temperature)
        self.steps, self.decode, self.temperature = steps, decode, temperature

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "Euler integration needs a continuous path"
        return None

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None):
        path = model.path
        x = path.sample_prior(num_samples, length, model.vocab_size, generator=generator, device=model.device)
        # steps evaluations at 0 = t_0 < ... < t_{steps-1} = t_max; the last one is decoded, not integrated
        times = path.schedule(max(self.steps - 1, 1), end=getattr(path, "t_max", 1.0), device=model.device)
        for i in progress(range(self.steps), desc="euler"):
            t = times[i].expand(num_samples)
            denoised = model.denoise(x, t)  # (B, L, V)
            if i + 1 < self.steps:
                x = x + (times[i + 1] - times[i]) * path.velocity(x, denoised, t)
                if hasattr(path, "project"):  # paths on the simplex (dirichlet) stay on it
                    x = path.project(x)
        return SampleOutput(decode_tokens(denoised, self.decode, self.temperature, generator), nfe=self.steps)


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
