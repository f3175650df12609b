"""Duo (Sahoo et al. 2025): the uniform-state NELBO, trained first through its Gaussian relaxation (the curriculum)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowzoo.objectives.base import Objective
from flowzoo.paths.uniform import UniformPath, argmax_alpha, gaussian_coefficients, transfer_gamma, uniform_nelbo
from flowzoo.registry import register
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice


def uniform_incompatibility(parts, what: str):
    """The refusals shared by the objectives of the uniform-state path."""
    if not isinstance(parts["path"], UniformPath):
        return "path", f"{what} needs the uniform-state path (--model.path=uniform)"
    if not getattr(parts["head"], "on_simplex", False) or not hasattr(parts["head"], "log_probs"):
        return "head", f"{what} needs a categorical head (log-probabilities over tokens)"
    backbone = parts.get("backbone")
    if backbone is not None and getattr(backbone, "causal", False):
        return "backbone", "uniform-state diffusion denoises all positions at once: use a bidirectional backbone (causal=false)"
    return None


def relaxed_sample(x1: torch.Tensor, gamma: torch.Tensor, vocab_size: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The Gaussian latent w = alpha~(gamma) onehot(x1) + sigma~(gamma) eps (B, L, V) whose argmax is x_t (Duo's ``_q_xt_gaussian``)."""
    a, s = gaussian_coefficients(gamma.reshape(-1, 1, 1))
    eps = torch.randn(*x1.shape, vocab_size, device=x1.device) if noise is None else noise
    return a * F.one_hot(x1, vocab_size).float() + s * eps


def gamma_range(objective, vocab_size: int) -> tuple[float, float]:
    """(gamma_min, gamma_max) of an objective at this vocabulary: as given, or carried from ``reference_vocab``."""
    if not objective.reference_vocab or objective.reference_vocab == vocab_size:
        return objective.gamma_min, objective.gamma_max
    key = (vocab_size, objective.reference_vocab, objective.gamma_min, objective.gamma_max)
    cache = objective.__dict__.setdefault("_gamma_cache", {})
    if key not in cache:
        cache[key] = tuple(transfer_gamma(g, objective.reference_vocab, vocab_size) for g in (objective.gamma_min, objective.gamma_max))
    return cache[key]


def network_time_of(path: UniformPath, alpha: torch.Tensor) -> torch.Tensor:
    """The flowzoo time whose log-linear alpha equals ``alpha`` (clamped into [0, 1]): what the network is told."""
    return path.time_of_alpha(alpha).clamp(0.0, 1.0).float()


@register("objective", "duo")
class Duo(Objective):
    """Duo: the uniform-state NELBO, trained first through its Gaussian relaxation (the curriculum).

    The uniform-state NELBO (:func:`flowzoo.paths.uniform.uniform_nelbo`), per token, at t ~ U[0, 1 - eps]
    (antithetic: ``stratified``), x_t drawn from the path. Logged: ``loss`` and ``ppl_bound`` = exp(loss).

    Curriculum (Duo's curriculum learning), while the global step is below ``curriculum_end`` and the model is training: Duo's
    time tau = 1 - t is mapped to gamma = gamma_min + tau (gamma_max - gamma_min); x_t = argmax w with w the Gaussian
    latent of :func:`relaxed_sample`; the network reads the tempered softmax softmax(w / T) (a (B, L, V) state)
    instead of onehot(x_t), with log10 T going linearly from ``temperature_log10_start`` (until ``curriculum_start``)
    to ``temperature_log10_end`` (at ``curriculum_end``); the NELBO is that of the argmax process, whose alpha and
    alpha' come from the Diffusion Transformation operator (Duo Eq. 10, :func:`flowzoo.paths.uniform.argmax_alpha`).
    From ``curriculum_end`` on (and in validation) the plain NELBO. Published: steps 100k-200k of 1M, gamma in
    [-3.5, -1.75], log10 T from -1 to -2 (Duo's configs/algo/duo.yaml); ``curriculum_end=0`` trains without it.
    ``reference_vocab`` > 0 reads the gammas as given for that vocabulary size and uses, at the model's, the gammas
    with the same argmax-process alphas (:func:`flowzoo.paths.uniform.transfer_gamma`): Duo's range is tuned for
    GPT-2's 50,257 tokens (alpha 0.93 to 0.04), which at V = 48 would only span alpha 0.9997 to 0.74.
    """

    likelihood_bound = True  # the validation loss is a NELBO: exp of it bounds the perplexity

    def __init__(
        self,
        curriculum_start: int = 100_000,
        curriculum_end: int = 200_000,
        gamma_min: float = -3.5,
        gamma_max: float = -1.75,
        temperature_log10_start: float = -1.0,
        temperature_log10_end: float = -2.0,
        time_sampling: str = "stratified",
        reference_vocab: int = 0,
    ) -> None:
        super().__init__()
        if reference_vocab < 0 or reference_vocab == 1:
            raise ValueError(f"reference_vocab must be 0 (off) or a vocabulary size of at least 2, got {reference_vocab}")
        self.reference_vocab = reference_vocab
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        if not 0 <= curriculum_start <= curriculum_end:
            raise ValueError(f"need 0 <= curriculum_start <= curriculum_end, got {curriculum_start} and {curriculum_end}")
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {gamma_min} and {gamma_max}")
        self.curriculum_start, self.curriculum_end = curriculum_start, curriculum_end
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.temperature_log10_start, self.temperature_log10_end = temperature_log10_start, temperature_log10_end
        self.time_sampling = time_sampling

    def incompatibility(self, parts):
        return uniform_incompatibility(parts, "the Duo objective")

    def temperature(self, step: int) -> float:
        """The softmax temperature T of the relaxation at a global step (Duo's ``_compute_gumbel_tau_inverse``)."""
        if step < self.curriculum_start:
            return 10.0**self.temperature_log10_start
        span = max(1, self.curriculum_end - self.curriculum_start)
        frac = min(1.0, (step - self.curriculum_start) / span)
        return 10.0 ** (self.temperature_log10_start + frac * (self.temperature_log10_end - self.temperature_log10_start))

    def in_curriculum(self, model) -> bool:
        return model.training and model.global_step < self.curriculum_end

    def forward(self, model, x1):
        path, V = model.path, model.vocab_size
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = u * path.t_max  # Duo's tau = 1 - t in [eps, 1]
        if self.in_curriculum(model):
            loss, xt = self.relaxed_loss(model, x1, t)
            extra = {"temperature_log10": torch.tensor(math.log10(self.temperature(model.global_step)))}
        else:
            xt = path.sample(x1, t, V)  # (B, L) ids
            log_probs = model.head.log_probs(model.logits(xt, t)).float()  # (B, L, V)
            loss = uniform_nelbo(log_probs, x1, xt, path.alpha(t)[:, None], path.alpha_rate(t)[:, None]).mean()
            extra = {}
        ppl = torch.exp(loss.detach()) if loss.detach() < 700 else torch.tensor(math.inf, device=loss.device)
        return {"loss": loss, "ppl_bound": ppl, "changed_share": (xt != x1).float().mean(), **extra}

    def relaxed_loss(self, model, x1, t):
        """The curriculum's NELBO (scalar) and the argmax ids x_t (B, L)."""
        path, V = model.path, model.vocab_size
        tau = 1 - t
        gamma_min, gamma_max = gamma_range(self, V)
        gamma = gamma_min + tau * (gamma_max - gamma_min)  # (B,)
        alpha, dalpha_dgamma = argmax_alpha(gamma, V)
        rate = -(gamma_max - gamma_min) * dalpha_dgamma  # d alpha / dt, flowzoo time
        w = relaxed_sample(x1, gamma, V)  # (B, L, V)
        xt = w.argmax(-1)
        state = torch.softmax(w / self.temperature(model.global_step), dim=-1)
        log_probs = model.head.log_probs(model.logits(state, network_time_of(path, alpha))).float()
        return uniform_nelbo(log_probs, x1, xt, alpha[:, None], rate[:, None]).mean(), xt
