"""The one-step map regressed on a frozen flow map's k-step samples, noise for noise."""

from __future__ import annotations

import torch

from flowzoo import registry
from flowzoo.errors import CheckpointError
from flowzoo.objectives._flowmap import FlowMapObjective, check_flow_map_parts, one_step_logits
from flowzoo.objectives._teacher import FrozenTeacher
from flowzoo.objectives.base import Objective
from flowzoo.registry import register

__all__ = ["PairedRegression", "one_step_logits"]  # one_step_logits: also for benchmarks (one_step_fit, refine_targets)


@register("objective", "paired_regression")
class PairedRegression(FrozenTeacher, Objective):
    """delta_{0,1} fitted to a frozen flow map's k-step draw from the same prior noise eps (DMD's paired regression
    with a fixed teacher; rectified-flow style pairs):

        L = E_eps CE( x^_k(eps) || delta_{0,1}(eps) ),   x^_k(eps) = the teacher's ``FlowMapSampler`` (k = ``teacher_steps``,
        argmax decode) started at eps.

    ``teacher`` is a flow map (a model trained by ``distill``, ``dmd``, ``psd``, ``lsd``, ...), frozen and handed over
    by the model (:mod:`flowzoo.teachers`) like ``distill``'s; ``init_from_teacher`` starts the student as it (so the
    student's k-step map starts as the target's) and ``init_from`` as another map, e.g. a deeper one. The data only
    set the batch's shape: each step draws ``num_generated`` (0: the batch size) fresh noises, so the pairs never
    repeat and what is not fitted is approximation or optimisation, not overfitting. Unlike ``dmd``'s
    ``step_regression_weight`` (the student's own k-step draw) the target does not move. Logs ``agreement``, the share
    of tokens the student's 1-step argmax shares with its target. A step costs (2k N_teacher + 6 N_student) n L FLOPs.
    """

    def __init__(
        self,
        teacher: str = "",
        teacher_steps: int = 4,
        num_generated: int = 0,
        init_from_teacher: bool = True,
        init_from: str = "",
    ) -> None:
        super().__init__()
        if teacher_steps < 1 or num_generated < 0:
            raise ValueError(f"paired_regression needs teacher_steps >= 1 and num_generated >= 0, got {teacher_steps}, {num_generated}")
        self.init_teacher(teacher, init_from_teacher, init_from)
        self.teacher_steps, self.num_generated = int(teacher_steps), int(num_generated)
        # the teacher's k-step draw from a given eps: the flow_map sampler, built through the registry (objectives do
        # not import samplers: docs/design.md)
        self.sampler = registry.build("sampler", {"name": "flow_map", "init_args": {"steps": self.teacher_steps, "fused": False}})

    def incompatibility(self, parts):
        return check_flow_map_parts(parts)

    def set_teacher(self, teacher) -> None:
        """Refuse a teacher that is not a flow map: only a map's k-step sampler draws what its k jumps mean."""
        if not isinstance(getattr(teacher, "objective", None), FlowMapObjective):
            trained = getattr(getattr(teacher, "objective", None), "registry_name", type(teacher).__name__)
            raise CheckpointError(
                f"paired_regression's teacher must be a flow map (trained by distill, dmd, psd, lsd, ...), whose k-step "
                f"samples are the targets; this one was trained by {trained!r}"
            )
        super().set_teacher(teacher)

    @torch.no_grad()
    def targets(self, eps: torch.Tensor) -> torch.Tensor:
        """x^_k(eps): the teacher's k-step tokens (n, L) from the prior draws eps (n, L, V)."""
        teacher = self.teacher()
        return self.sampler.sample(teacher, eps.shape[0], eps.shape[1], noise=eps).tokens

    def regression(self, model, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss and ``agreement`` on the prior draws eps (n, L, V)."""
        aim = self.targets(eps)  # (n, L)
        logits = one_step_logits(model, eps).float()  # (n, L, V)
        loss = model.head.loss(logits, aim).mean()  # CE against the ids (the Gaussian head: squared error to the one-hot)
        return {"loss": loss, "agreement": (logits.detach().argmax(-1) == aim).float().mean()}

    def forward(self, model, x1):
        n = self.num_generated or x1.shape[0]
        eps = model.path.sample_prior(n, x1.shape[1], model.vocab_size, device=x1.device)  # (n, L, V)
        return self.regression(model, eps)
