"""Ancestral sampling of masked diffusion (MDLM's ``ddpm_cache`` predictor)."""

from __future__ import annotations

from typing import Iterator

import torch

from flowzoo.paths.masked import MaskedPath, subs_log_probs
from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.base import IterativeSampler
from flowzoo.validation import check_choice

MODES = ("ancestral", "counted")


def sample_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """argmax_v p_v / E_v with E_v ~ Exp(1): an exact draw from (unnormalised) p, in float64.

    float32 noise truncates small probabilities (the bug MDLM/Duo fixed), which lowers entropy.
    """
    probs = probs.double()
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    exp_noise = -torch.log1p(-u)  # Exp(1), never 0 since u < 1
    return (probs / exp_noise).argmax(-1)


@register("sampler", "ancestral")
class AncestralSampler(IterativeSampler):
    """T steps t_0 = 0 < ... < t_T: a [MASK] at t_i becomes token v w.p. ((a_j - a_i)/(1 - a_i)) p_theta(v | x),
    stays masked w.p. (1 - a_j)/(1 - a_i) (a = alpha, j = i + 1); unmasked tokens are kept (SUBS).

    ``mode="ancestral"`` is MDLM: times t_i = i (1 - eps_end) / T end at MDLM time 1 - t_T = eps_end, then
    ``noise_removal`` fills any remaining mask with argmax p_theta (``noise_removal=False``: a draw from p_theta).
    ``end_eps`` is eps_end: None (the default, every committed table's) = the path's training eps (1e-3 by default,
    t_T = path.t_max); MDLM's and Duo's code sample to 1e-5 (``end_eps=1e-5``), which leaves fewer masks to the
    argmax fill. ``mode="counted"`` unmasks exactly round(L t_j) - round(L t_i) uniformly chosen
    masked positions per step, each drawn from p_theta, ending at t = 1 (T = L: one token per step).
    The network is skipped while no token changed (``cache``), valid without time conditioning.
    """

    def __init__(self, steps: int = 128, mode: str = "ancestral", noise_removal: bool = True, cache: bool = True, temperature: float = 1.0,
                 end_eps: float | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_choice(mode, MODES, "mode")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if end_eps is not None:
            if mode == "counted":
                raise ValueError("end_eps sets where mode=ancestral stops; mode=counted always ends at t = 1 (leave end_eps unset)")
            if not 0.0 <= end_eps < 1.0:
                raise ValueError(f"end_eps must lie in [0, 1), got {end_eps}")
        self.steps, self.mode, self.noise_removal, self.cache, self.temperature = steps, mode, noise_removal, cache, temperature
        self.end_eps = end_eps

    def end_time(self, path) -> float:
        """The last time t_T of the schedule (flowzoo time, 1 = data): 1 for ``counted``; 1 - end_eps, or the path's
        t_max = 1 - eps when ``end_eps`` is None, for ``ancestral``."""
        if self.mode == "counted":
            return 1.0
        return path.t_max if self.end_eps is None else 1.0 - self.end_eps

    def incompatibility(self, parts):
        if not isinstance(parts["path"], MaskedPath):
            return "path", "ancestral sampling unmasks tokens of the absorbing-state path (--model.path=masked)"
        return None

    def _p_x0(self, model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """SUBS p_theta(x0 | x_t) (B, L, V) in float64, tempered by 1/temperature."""
        log_probs = model.head.log_probs(model.logits(x, t)).double()
        if self.temperature != 1.0:
            log_probs = torch.log_softmax(log_probs / self.temperature, dim=-1)
        return subs_log_probs(log_probs, x, model.vocab_size).exp()

    @torch.no_grad()
    def iterate(self, model, num_samples: int, length: int, generator=None, prompt=None) -> Iterator[tuple[torch.Tensor, int]]:
        """Yield (x, nfe so far) after every step, from all-[MASK] (but the prompt's known ids, given unmasked and,
        by SUBS, never resampled) to clean ids."""
        path, V = model.path, model.vocab_size
        x = path.sample_prior(num_samples, length, V, device=model.device)
        if prompt is not None:
            x = prompt.apply(x)
        times = path.schedule(self.steps, end=self.end_time(path), device=model.device).double()
        reuse = self.cache and not path.time_conditioning
        p_x0, nfe = None, 0
        for i in progress(range(self.steps), desc="ancestral"):
            t = times[i].expand(num_samples)
            if p_x0 is None:
                p_x0, nfe = self._p_x0(model, x, t.float()), nfe + 1
            masked = x == V
            if self.mode == "ancestral":
                a_s, a_t = path.alpha(times[i]), path.alpha(times[i + 1])
                q = torch.cat([p_x0 * (a_t - a_s), (1 - a_t).expand(*x.shape, 1)], dim=-1) / (1 - a_s)  # (B, L, V+1)
                draw = sample_categorical(q, generator)
            else:
                count = int(round(length * float(times[i + 1]))) - int(round(length * float(times[i])))
                draw = self._counted(p_x0, masked, count, V, generator)
            x_next = torch.where(masked, draw, x)
            if not reuse or not torch.equal(x_next, x):
                p_x0 = None
            x = x_next
            yield x, nfe
        if (x == V).any():  # only after mode="ancestral", which stops at 1 - end_eps < 1
            if p_x0 is None:
                p_x0, nfe = self._p_x0(model, x, times[-1].expand(num_samples).float()), nfe + 1
            fill = p_x0.argmax(-1) if self.noise_removal else sample_categorical(p_x0, generator)
            x = torch.where(x == V, fill, x)
            yield x, nfe

    @staticmethod
    def _counted(p_x0, masked, count, V, generator):
        """Unmask ``count`` masked positions per row, chosen uniformly, each drawn from p_x0; others stay [MASK]."""
        B, L = masked.shape
        scores = torch.rand(B, L, generator=generator, device=masked.device, dtype=torch.float64)
        scores = torch.where(masked, scores, torch.full_like(scores, -1.0))
        k = min(count, L)
        chosen = torch.zeros_like(masked)
        if k > 0:
            top = scores.topk(k, dim=-1).indices
            chosen.scatter_(1, top, True)
            chosen &= masked
        tokens = sample_categorical(p_x0, generator)
        return torch.where(chosen, tokens, torch.full_like(tokens, V))
