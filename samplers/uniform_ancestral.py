"""Ancestral sampling of uniform-state diffusion (Duo's ``ancestral`` predictor, with its greedy tail)."""

from __future__ import annotations

from typing import Iterator

import torch

from flowzoo.paths.uniform import UniformPath, uniform_posterior
from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.ancestral import sample_categorical
from flowzoo.samplers.base import IterativeSampler
from flowzoo.validation import check_choice

NOISE_REMOVALS = ("ancestral", "greedy", "none")


@register("sampler", "uniform_ancestral")
class UniformAncestralSampler(IterativeSampler):
    """Duo's ancestral sampler for the uniform path: T posterior steps, then noise removal (ancestral or greedy tail).

    T steps t_0 = 0 < ... < t_T = 1 - ``end_eps`` (uniform in t): every token is redrawn from the approximate
    posterior q(x_{t_{i+1}} | x_{t_i}, x_theta) of :func:`flowzoo.paths.uniform.uniform_posterior`, x_theta the
    network's prediction at (x_{t_i}, t_i), in float64; then one more evaluation removes the remaining noise:

    * ``noise_removal="ancestral"`` (Duo's default): a draw from the posterior with alpha_s = 1, i.e. from
      x_theta reweighted by the chance that x_t came from each token;
    * ``"greedy"``: argmax x_theta, Duo's greedy tail (lower entropy, lower generative perplexity);
    * ``"none"``: the tokens after the last step (T evaluations).

    Duo's network is time-conditioned, so no evaluation is cached: nfe = T (+1 with noise removal).
    """

    def __init__(self, steps: int = 128, noise_removal: str = "ancestral", end_eps: float = 1e-5) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_choice(noise_removal, NOISE_REMOVALS, "noise_removal")
        if not 0.0 <= end_eps < 1.0:
            raise ValueError(f"end_eps must lie in [0, 1), got {end_eps}")
        self.steps, self.noise_removal, self.end_eps = steps, noise_removal, end_eps

    def incompatibility(self, parts):
        if not isinstance(parts["path"], UniformPath):
            return "path", "uniform ancestral sampling redraws tokens of the uniform-state path (--model.path=uniform)"
        return None

    @staticmethod
    def prediction(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_theta(x_t, t) (B, L, V) in float64."""
        return model.head.log_probs(model.logits(x, t)).double().exp()

    @torch.no_grad()
    def iterate(self, model, num_samples: int, length: int, generator=None, prompt=None) -> Iterator[tuple[torch.Tensor, int]]:
        """Yield (x, nfe so far) after every step, from uniform noise to clean ids. A ``prompt``'s known ids are
        held clean at every step (x_t^l = x^l for l in K: written back after each draw), the rest is redrawn."""
        path, V = model.path, model.vocab_size
        hold = (lambda x: x) if prompt is None else prompt.apply
        x = hold(path.sample_prior(num_samples, length, V, generator=generator, device=model.device))
        times = path.schedule(self.steps, end=1.0 - self.end_eps, device=model.device).double()
        nfe = 0
        for i in progress(range(self.steps), desc="uniform ancestral"):
            t = times[i].expand(num_samples)
            x_theta = self.prediction(model, x, t.float())
            nfe += 1
            q = uniform_posterior(x_theta, x, path.alpha(times[i + 1]), path.alpha(times[i]))  # (B, L, V)
            x = hold(sample_categorical(q, generator))
            yield x, nfe
        if self.noise_removal == "none":
            return
        x_theta = self.prediction(model, x, times[-1].expand(num_samples).float())
        nfe += 1
        if self.noise_removal == "greedy":
            x = x_theta.argmax(-1)
        else:
            one = torch.ones((), dtype=torch.float64, device=x.device)
            x = sample_categorical(uniform_posterior(x_theta, x, one, path.alpha(times[-1])), generator)
        yield hold(x), nfe
