"""Teacher-refined one-step distillation: the one-step map is fitted to its own samples as the teacher repairs them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowzoo.objectives._flowmap import one_step_logits
from flowzoo.objectives.distill import Distill, trajectory_target
from flowzoo.registry import register


@register("objective", "refine")
class RefinedDistill(Distill):
    """``distill``'s losses plus a one-step loss toward the student's own samples as the teacher repairs them.

    Per-sample distillation fits delta_{0,1}(x_0) to where the teacher's ODE goes from x_0, a map the student
    resolves only in part. Here the target is a nearby sequence instead: the student's own one-step decode
    x^ = onehot(argmax delta_{0,1}(x_0)), put back on the path at ``refine_from`` with the same noise,
    x_{t0} = (1-t0) x_0 + t0 x^ (SDEdit, Meng et al. 2022, with the sample's own x_0), and carried to t = 1 by the
    teacher's ODE in ``refine_steps`` evaluations (:func:`~flowzoo.objectives.distill.trajectory_target`):

        L_refine = E_{x_0} sum_l CE( argmax X^teacher_{t0,1}((1-t0) x_0 + t0 x^)^l || delta_{0,1}(x_0)^l ).

    At low noise the teacher keeps the tokens that fit their neighbours and replaces those that do not, so the
    target differs from x^ only where x^ is locally wrong, and the student's own choice of branch (which states a
    sample visits) is kept: a per-sample target, deterministic in x_0, that the student can reach. ``refine_from`` is
    in the path's uniform time (tau on a tau path: about the share of argmax(x_{t0}) that is the clean token).
    ``num_generated`` fresh one-step samples a step (0: the batch size), ``refine_weight`` scales the loss; the
    logged ``refine_changed`` is the share of tokens the teacher changed.
    """

    def __init__(
        self,
        refine_weight: float = 1.0,
        refine_from: float = 0.4,
        refine_steps: int = 8,
        num_generated: int = 0,
        **distill,
    ) -> None:
        super().__init__(**distill)
        if refine_weight < 0 or num_generated < 0 or refine_steps < 1 or not 0.0 <= refine_from < 1.0:
            raise ValueError(
                "refine needs refine_weight >= 0, num_generated >= 0, refine_steps >= 1 and refine_from in [0, 1), "
                f"got {refine_weight}, {num_generated}, {refine_steps}, {refine_from}"
            )
        self.refine_weight, self.refine_from, self.refine_steps = refine_weight, refine_from, refine_steps
        self.num_generated = num_generated

    def incompatibility(self, parts):
        found = super().incompatibility(parts)
        if found is None and not parts["path"].mean_denoiser:
            return "path", "refine puts the one-step samples back on the path, which needs the mean-denoiser (linear) path"
        if found is None and not parts["head"].on_simplex:
            return "head", "refine decodes the one-step map's delta: it needs the categorical head"
        return found

    def forward(self, model, x1):
        out = super().forward(model, x1)  # distill's diagonal and map losses
        found = self.refine_loss(model, self.num_generated or x1.shape[0], x1.shape[1], x1.device)
        out.update({k: v.detach() for k, v in found.items()})
        out["loss"] = out["loss"] + self.refine_weight * found["refine"]
        return out

    def refine_loss(self, model, n: int, length: int, device) -> dict[str, torch.Tensor]:
        """CE of the one-step map on n fresh noises against the teacher's repair of its own decodes."""
        teacher = self.teacher(model, device)
        x0 = model.path.sample_prior(n, length, model.vocab_size, device=device)  # (n, L, V)
        logits = one_step_logits(model, x0).float()  # (n, L, V)
        decoded = logits.detach().argmax(-1)  # x^ as token ids, (n, L)
        target = self.refined(teacher, x0, decoded)
        return {"refine": model.head.loss(logits, target).mean(), "refine_changed": (target != decoded).float().mean()}

    @torch.no_grad()
    def refined(self, teacher, x0: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's repair (n, L) of the sequences ``ids`` (n, L): argmax X^teacher_{t0,1}((1-t0) x_0 + t0 onehot(ids))."""
        n, path = x0.shape[0], teacher.path
        u0 = torch.full((n,), self.refine_from, device=x0.device)
        t0 = path.time_from_uniform(u0)
        sample = F.one_hot(ids, x0.shape[-1]).to(x0.dtype)
        xt0 = path.flow_map(x0, sample, torch.zeros_like(t0), t0)  # (1-t0) x_0 + t0 x^
        end = trajectory_target(teacher, xt0, u0, torch.ones_like(u0), self.refine_steps)  # X^teacher_{t0,1}, (n, L, V)
        return end.argmax(-1)
