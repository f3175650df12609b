"""Euler integration of the probability-flow ODE."""

from __future__ import annotations

import torch

from flowzoo.progress import progress
from flowzoo.prompt import held
from flowzoo.registry import register
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode
from flowzoo.state import EmbeddedSampling


@register("sampler", "euler")
class EulerSampler(EmbeddedSampling, Sampler):
    """Euler ODE: x <- x + (t_{i+1} - t_i) b_{t_i}(x) from t = 0, then decode from D at the last time (steps = NFE).

    On the linear path an Euler step is the flow map on the diagonal, x <- a x + b D_t(x) with
    (a, b) = ((1-t')/(1-t), (t'-t)/(1-t)); ``fused`` (None: automatic, on CUDA) then carries x as its input
    embedding (B, L, D) with flowzoo.kernels (``flowzoo.state.EmbeddedState``).
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
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        state = held(self.state(model), prompt)  # dense (B, L, V) or embedded (B, L, D): the one place the kernels are chosen
        x = state.prior(num_samples, length, generator)
        times = self.schedule(model.path, device=model.device)
        for i in progress(range(self.steps), desc="euler"):
            t = times[i].expand(num_samples)
            denoised = state.predict(x, t)  # D_t(x): (B, L, V), or the hidden state (B, L, D) whose head gives it
            if i + 1 < self.steps:
                x = state.euler_step(x, denoised, t, times[i + 1].expand(num_samples))
        tokens, prediction = state.decode(denoised, self.decode, self.temperature, generator)
        return SampleOutput(tokens, nfe=self.steps, prediction=prediction)
