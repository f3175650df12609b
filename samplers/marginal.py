"""The marginal sampler: every position drawn independently at t = 0, the baseline that shows what the flow adds."""

from __future__ import annotations

import torch

from flowzoo.registry import register
from flowzoo.samplers.base import SampleOutput, Sampler, check_decode, decode_tokens


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
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        """With a prompt the known positions enter as their clean one-hot (the marginals then read them)."""
        x = model.path.sample_prior(num_samples, length, model.vocab_size, generator=generator, device=model.device)
        if prompt is not None:
            x = torch.where(prompt.mask[..., None], prompt.onehot(x.shape[-1], x.dtype), x)
        t = torch.zeros(num_samples, device=model.device)
        tokens = decode_tokens(model.denoise(x, t), "sample", self.temperature, generator)
        return SampleOutput(tokens if prompt is None else prompt.apply(tokens), nfe=1)
