"""Discrete Consistency Distillation (DCD, Duo): a uniform-state student jumps along the argmax of the
deterministic trajectories of the underlying Gaussian diffusion."""

from __future__ import annotations

from typing import Callable

import torch

from flowzoo.objectives._teacher import RoundTeacher
from flowzoo.objectives.base import Objective
from flowzoo.objectives.duo import gamma_range, network_time_of, relaxed_sample, uniform_incompatibility
from flowzoo.objectives.sdtt import DIVERGENCES, divergence
from flowzoo.paths.uniform import argmax_alpha, uniform_nelbo
from flowzoo.registry import register
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids (B, L), alpha (B,)) -> log-probs (B, L, V)


def dcd_loss(
    student: Predict,
    teacher: Predict,
    x1: torch.Tensor,
    tau: torch.Tensor,
    dt: float,
    gamma_min: float,
    gamma_max: float,
    noise: torch.Tensor,
    kind: str = "kl-bwd",
) -> torch.Tensor:
    """Per-token DCD loss (B, L) at Duo times ``tau`` (B,) (0 = data) with Gaussian noise ``noise`` (B, L, V).

    tau_t = clip(tau + dt, 0, 1), tau_s = tau_t - dt, gamma = gamma_min + tau (gamma_max - gamma_min); the two points
    w_t = alpha~_t onehot(x) + sigma~_t eps and w_s = alpha~_s onehot(x) + sigma~_s eps share eps, so they lie on one
    deterministic trajectory of the Gaussian probability-flow ODE (DDIM with the clean x); the student reads
    x_t = argmax w_t, the teacher x_s = argmax w_s, each told the alpha of its argmax process (Duo Eq. 10), and
    D(student(x_t) || teacher(x_s)) is the loss (Duo's ``Distillation.nll``).
    """
    V = noise.shape[-1]
    tau_t = (tau + dt).clamp(0.0, 1.0)
    tau_s = tau_t - dt
    gamma_t = gamma_min + tau_t * (gamma_max - gamma_min)
    gamma_s = gamma_min + tau_s * (gamma_max - gamma_min)
    xt = relaxed_sample(x1, gamma_t, V, noise).argmax(-1)
    xs = relaxed_sample(x1, gamma_s, V, noise).argmax(-1)
    alpha_t, alpha_s = argmax_alpha(gamma_t.double(), V)[0], argmax_alpha(gamma_s.double(), V)[0]
    with torch.no_grad():
        target = teacher(xs, alpha_s)
    return divergence(student(xt, alpha_t), target, kind)


@register("objective", "dcd")
class DCD(RoundTeacher, Objective):
    """Duo's discrete consistency distillation: a uniform-state student learns the teacher's jump along Gaussian ODE paths.

    ``teacher``: a flowzoo checkpoint trained with ``duo`` on the uniform path; the student starts as its copy.

    Loss: the mean over tokens of :func:`dcd_loss`, tau ~ U[eps, 1] (``stratified``, antithetic). In round r
    (``round_steps`` global steps each) the teacher is one step dt = 2^r / ``base_steps`` away in Duo's time and, from
    round 1 on, is the student as it was when the round began (Duo's ``update_teacher_every`` with
    ``teacher_ema=False``): each round doubles the jump. Published (Duo's scripts/distil_owt.sh and
    configs/algo/distillation.yaml): base_steps (algo.T) 512, 10k steps a round, 50k steps, gamma in [-4, -1],
    kl-bwd, lr 6e-5, EMA 0.999. ``rounds`` = 0: no limit (Duo's). ``reference_vocab``: as in
    :class:`flowzoo.objectives.duo.Duo` (the gammas carried from that vocabulary size at equal alphas).

    In evaluation (validation, ``flowzoo benchmark``) the loss is the student's uniform-state NELBO, which needs no
    teacher: exp of it bounds the student's perplexity.
    """

    likelihood_bound = True  # validation reports the uniform-state NELBO

    def __init__(
        self,
        teacher: str = "",
        divergence: str = "kl-bwd",
        base_steps: int = 512,
        round_steps: int = 10_000,
        rounds: int = 0,
        gamma_min: float = -4.0,
        gamma_max: float = -1.0,
        time_sampling: str = "stratified",
        reference_vocab: int = 0,
    ) -> None:
        super().__init__()
        if reference_vocab < 0 or reference_vocab == 1:
            raise ValueError(f"reference_vocab must be 0 (off) or a vocabulary size of at least 2, got {reference_vocab}")
        self.reference_vocab = reference_vocab
        check_choice(divergence, DIVERGENCES, "divergence")
        if base_steps < 1:
            raise ValueError(f"base_steps must be at least 1, got {base_steps}")
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got {gamma_min} and {gamma_max}")
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        self.divergence, self.base_steps, self.time_sampling = divergence, base_steps, time_sampling
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.init_rounds(teacher, round_steps, rounds)

    def incompatibility(self, parts):
        return uniform_incompatibility(parts, "DCD")

    def dt(self) -> float:
        return 2 ** int(self.round) / self.base_steps

    def forward(self, model, x1):
        path, V = model.path, model.vocab_size
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        if not model.training:
            t = u * path.t_max
            xt = path.sample(x1, t, V)
            log_probs = model.head.log_probs(model.logits(xt, t)).float()
            loss = uniform_nelbo(log_probs, x1, xt, path.alpha(t)[:, None], path.alpha_rate(t)[:, None]).mean()
            return {"loss": loss, "ppl_bound": torch.exp(loss.clamp(max=700)), "round": self.round.float()}
        teacher = self.advance(model)
        tau = 1 - u * path.t_max  # Duo's time in [eps, 1]

        def student(x, alpha):
            return model.head.log_probs(model.logits(x, network_time_of(path, alpha))).float()

        def teach(x, alpha):
            return teacher.head.log_probs(teacher.logits(x, network_time_of(path, alpha))).float()

        noise = torch.randn(*x1.shape, V, device=x1.device)
        gamma_min, gamma_max = gamma_range(self, V)
        loss = dcd_loss(student, teach, x1, tau, self.dt(), gamma_min, gamma_max, noise, self.divergence).mean()
        return {"loss": loss, "round": self.round.float(), "dt": torch.tensor(self.dt())}
