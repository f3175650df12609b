"""Self-Distillation Through Time (SDTT, Deschenaux & Gulcehre 2024) for masked diffusion (MDLM)."""

from __future__ import annotations

from typing import Callable

import torch

from flowzoo.objectives._teacher import RoundTeacher
from flowzoo.objectives.base import Objective
from flowzoo.objectives.mdlm import mdlm_nelbo
from flowzoo.paths.masked import MaskedPath
from flowzoo.registry import register
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice

DIVERGENCES = ("kl-bwd", "kl-fwd", "tvd")


def draw_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """argmax_v p_v / E_v, E_v ~ Exp(1), in float64: an exact draw from unnormalised ``probs`` (..., K), the draw of
    the ancestral sampler (objectives do not import samplers)."""
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    return (probs.double() / -torch.log1p(-u)).argmax(-1)


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row divergence (N,) between log-probabilities (N, V): ``kl-bwd`` KL(student || teacher) (SDTT's
    default), ``kl-fwd`` KL(teacher || student), ``tvd`` (1/2) sum |p_student - p_teacher|."""
    if kind == "kl-bwd":
        return (student.exp() * (student - teacher)).sum(-1)
    if kind == "kl-fwd":
        return (teacher.exp() * (teacher - student)).sum(-1)
    if kind == "tvd":
        return 0.5 * (student.exp() - teacher.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; choices: {', '.join(DIVERGENCES)}")


@torch.no_grad()
def teacher_targets(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xt: torch.Tensor,
    times: torch.Tensor,
    path: MaskedPath,
    mask_id: int,
    generator=None,
    draw: Callable = draw_categorical,
) -> torch.Tensor:
    """The teacher's log p(x | .) (B, L, V) for every [MASK] of ``xt``, after ancestral steps through ``times``.

    ``times`` (m + 1, B) are the step boundaries in flowzoo time, t_0 = t (the student's time) < t_1 < ... < t_m.
    Step k evaluates ``predict(x, t_k)`` (SUBS log-probabilities of the teacher) and unmasks each [MASK] into v with
    probability (a_{k+1} - a_k)/(1 - a_k) p(v) (a = alpha, times past 1 unmask everything); a position takes the
    prediction of the step that unmasked it, and positions still masked after m steps take the last step's
    (SDTT's ``_teacher_logprobs_on_mask``). ``draw`` samples token ids from unnormalised probabilities (B, L, V + 1).
    """
    if times.shape[0] < 2:
        raise ValueError(f"times needs at least two step boundaries (m + 1, B), got shape {tuple(times.shape)}")
    x, target = xt, None
    for k in range(times.shape[0] - 1):
        log_p = predict(x, times[k])  # (B, L, V)
        target = torch.zeros_like(log_p) if target is None else target
        a_k = path.alpha(times[k].double().clamp(max=1.0)).reshape(-1, 1, 1)
        a_next = path.alpha(times[k + 1].double().clamp(max=1.0)).reshape(-1, 1, 1)
        q = torch.cat([log_p.double().exp() * (a_next - a_k), (1 - a_next).expand(*x.shape, 1)], dim=-1)  # (B, L, V+1)
        masked = x == mask_id
        x_next = torch.where(masked, draw(q, generator), x)
        unmasked_now = masked & (x_next != mask_id)
        target = torch.where(unmasked_now[..., None], log_p, target)
        x = x_next
    return torch.where((x == mask_id)[..., None], log_p, target)


@register("objective", "sdtt")
class SDTT(RoundTeacher, Objective):
    """SDTT: an MDLM student learns in one ancestral step what its teacher does in m, in rounds that halve the steps.

    The student learns in one ancestral step of size m dt what the teacher does in m steps of size dt:

      L = E_{t, x_t} mean over [MASK] positions l of D(p_student(. | x_t)^l || p_teacher^l),

    p_teacher^l from :func:`teacher_targets` (``teacher_steps`` = m steps of dt from t), D = ``divergence``.
    dt = t_max / ``base_steps`` * m^r in round r (a round = ``round_steps`` global steps, ``rounds`` of them); at each
    new round the student becomes the teacher, so after r rounds the student samples with base_steps / m^r steps
    (``--model.sampler.steps``). t ~ U[0, 1 - eps] (``stratified``: antithetic, as SDTT's). The student starts as a
    copy of ``teacher`` (any trained flowzoo MDLM checkpoint or save_pretrained directory).
    Published (SDTT's multi-round config): base 1024, m = 2, 10k steps a round, 7 rounds (1024 -> 8 steps), kl-bwd.

    In evaluation (validation, ``flowzoo benchmark``) the loss is the student's MDLM NELBO, which needs no teacher:
    exp of it bounds the student's perplexity, the figure SDTT reports beside sample quality.
    """

    likelihood_bound = True  # validation reports the MDLM NELBO

    def __init__(
        self,
        teacher: str = "",
        divergence: str = "kl-bwd",
        teacher_steps: int = 2,
        base_steps: int = 1024,
        round_steps: int = 10_000,
        rounds: int = 7,
        time_sampling: str = "stratified",
    ) -> None:
        super().__init__()
        check_choice(divergence, DIVERGENCES, "divergence")
        if teacher_steps < 2:
            raise ValueError(f"teacher_steps must be at least 2, got {teacher_steps}")
        if base_steps < 1:
            raise ValueError(f"base_steps must be at least 1, got {base_steps}")
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        self.divergence, self.teacher_steps, self.base_steps, self.time_sampling = divergence, teacher_steps, base_steps, time_sampling
        self.init_rounds(teacher, round_steps, rounds)

    def incompatibility(self, parts):
        if not isinstance(parts["path"], MaskedPath):
            return "path", "SDTT distils masked diffusion (--model.path=masked)"
        if not getattr(parts["head"], "on_simplex", False) or not hasattr(parts["head"], "log_probs"):
            return "head", "SDTT compares categorical predictions: use a categorical head"
        backbone = parts.get("backbone")
        if backbone is not None and getattr(backbone, "causal", False):
            return "backbone", "masked diffusion denoises all positions at once: use a bidirectional backbone (causal=false)"
        return None

    def student_steps(self) -> int:
        """The sampling steps the student is trained for in the current round."""
        return max(1, round(self.base_steps / self.teacher_steps ** (int(self.round) + 1)))

    def forward(self, model, x1):
        path, V = model.path, model.vocab_size
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = u * path.t_max  # MDLM time 1 - t in [eps, 1]
        xt = path.sample(x1, t, V)  # (B, L)
        if not model.training:
            log_probs = model.head.log_probs(model.logits(xt, t)).float()
            loss = mdlm_nelbo(log_probs, x1, xt, t, path).mean()
            return {"loss": loss, "ppl_bound": torch.exp(loss.clamp(max=700)), "round": self.round.float()}
        teacher = self.advance(model)
        dt = path.t_max / self.base_steps * self.teacher_steps ** int(self.round)
        times = t[None] + dt * torch.arange(self.teacher_steps + 1, device=x1.device, dtype=t.dtype)[:, None]  # (m+1, B)

        def predict(x, s):
            return teacher.head.log_probs(teacher.logits(x, s.clamp(max=path.t_max).float())).float()

        target = teacher_targets(predict, xt, times, path, V)
        student = model.head.log_probs(model.logits(xt, t)).float()  # (B, L, V)
        masked = xt == V
        per_row = divergence(student[masked], target[masked], self.divergence)  # (N,)
        loss = per_row.mean() if per_row.numel() else student.sum() * 0.0
        return {"loss": loss, "round": self.round.float(), "student_steps": torch.tensor(float(self.student_steps()))}
