"""Two-stage flow-map distillation: a frozen teacher flow supplies the targets of a flow-map student."""

from __future__ import annotations

import torch

from flowzoo.objectives._teacher import FrozenTeacher, SelfConditionedTeacher, require_self_conditioned
from flowzoo.objectives.flow_map_config import FlowMapConfig
from flowzoo.objectives._flowmap import (
    MIDPOINTS,
    FlowMapObjective,
    adaptive_weight,
    lagrangian_residual,
    sample_middle,
)
from flowzoo.paths.base import expand_time
from flowzoo.objectives.psd import semigroup_target, semigroup_term
from flowzoo.registry import register
from flowzoo.validation import check_choice

TARGETS = ("semigroup", "lagrangian", "trajectory")
STUDENT_INITS = ("copy", "euler_step")
DIAGONAL_TARGETS = ("teacher", "data")


@register("objective", "distill")
class Distill(FrozenTeacher, FlowMapObjective):
    """Student flow map from a frozen teacher flow (``teacher``: a .ckpt or save_pretrained directory).

    Diagonal: CE(D^teacher_t(x_t) || delta_{t,t}(x_t)) (or the data). Off the diagonal, ``target``:
    ``semigroup``: CE(sg[gamma delta_{s,u} + (1-gamma) delta_{u,t}(X_{s,u})] || delta_{s,t}) with pieces shorter
    than ``teacher_gap`` read from the teacher's D (FMLM's recipe with the teacher as the anchor);
    ``lagrangian``: ||(1-t)(d/dt X_{s,t}(x_s) - b^teacher_t(X_{s,t}(x_s)))||^2, the teacher's velocity at the landing point;
    ``trajectory``: CE(sg[delta^teacher_{s,t}(x_s)] || delta_{s,t}), the mean denoiser of the teacher's own trajectory
    from s to t integrated with ``teacher_steps`` exact-map steps (see :func:`trajectory_target`).

    The objective loads nothing: the model (:mod:`flowzoo.teachers`, before the first loss) loads the teacher ``teacher``
    names and hands it over (:meth:`set_teacher`), kept out of the module tree (never in the student's weights).
    ``init_from_teacher`` has the model copy the teacher's backbone into the student once (a buffer here remembers
    it, so a resumed or reloaded student is never overwritten), or, given ``init_from`` (a checkpoint of a model on
    the same path, e.g. an already distilled student), that model's backbone: fine-tuning with another objective.
    ``student_init`` says what the copied student computes at step 0: ``copy`` (every weight as the teacher's: the
    teacher read with its gap embedding, about D_t(x_s)) or ``euler_step`` (FLM: delta_{s,t}(x_s) = D_s(x_s), so
    X_{s,t} is the teacher's Euler step from s to t; the backbone's ``euler_step_init``).

    ``teacher_self_condition``: a self-conditioning teacher (CDCD, Plaid) is read as it was trained, each read two
    passes D_t(x | sg[D_t(x | 0)]) (twice the teacher's forwards); false (the default) reads it once with D^ = 0.
    The student (a one-pass map) always reads D^ = 0.

    ``condition_share``: training for prompts (:class:`~flowzoo.objectives._flowmap.FlowMapObjective`): the student
    and the teacher read every state (x_t, x_s, the semigroup's X_{s,u}, the landing point X_{s,t}, the teacher's
    trajectory) with the known positions at their clean one-hot; the losses are averaged over the unknown ones.
    """

    def __init__(
        self,
        teacher: str = "",
        target: str = "semigroup",
        diagonal_target: str = "teacher",
        init_from_teacher: bool = True,
        teacher_gap: float = 0.0,
        flow_map: FlowMapConfig = FlowMapConfig(),
        midpoint: str = "middle",
        adaptive: bool = False,
        teacher_steps: int = 16,
        init_from: str = "",
        condition_share: float = 0.0,
        student_init: str = "copy",
        teacher_self_condition: bool = False,
    ) -> None:
        super().__init__(flow_map, condition_share)
        check_choice(student_init, STUDENT_INITS, "student_init")
        if student_init == "euler_step" and (init_from or not init_from_teacher):
            raise ValueError(
                "student_init='euler_step' starts the student as the teacher's Euler step, so it needs init_from_teacher=true "
                "and no init_from (a model given there is already a map: it starts as that model)"
            )
        self.student_init, self.teacher_self_condition = student_init, bool(teacher_self_condition)
        if teacher_steps < 1:
            raise ValueError(f"teacher_steps must be at least 1, got {teacher_steps}")
        self.teacher_steps = teacher_steps
        check_choice(target, TARGETS, "distillation target")
        check_choice(diagonal_target, DIAGONAL_TARGETS, "diagonal_target")
        check_choice(midpoint, MIDPOINTS, "midpoint")
        if teacher_gap < 0:
            raise ValueError(f"teacher_gap must be non-negative, got {teacher_gap}")
        self.target, self.diagonal_target_kind, self.teacher_gap = target, diagonal_target, teacher_gap
        self.midpoint, self.adaptive = midpoint, adaptive
        self.init_teacher(teacher, init_from_teacher, init_from)  # teacher_copied: saved with the weights

    def incompatibility(self, parts):
        found = super().incompatibility(parts)
        backbone = parts.get("backbone")  # given when the model is built (not when a sampler is swapped in)
        if found is None and self.student_init == "euler_step" and backbone is not None:
            refusal = getattr(backbone, "euler_step_refusal", lambda: "it cannot start a map as its flow's Euler step")()
            if refusal:
                return "backbone", f"student_init='euler_step': {refusal}"
        if found is None and self.target == "trajectory" and not parts["path"].mean_denoiser:
            return "path", "the trajectory target averages the teacher's D along its path, which needs the mean-denoiser (linear) path"
        return found

    # --- losses ------------------------------------------------------------------------
    def diagonal_target(self, model, xt, t, x1):
        if self.diagonal_target_kind == "data":
            return x1
        teacher = self.read_teacher(model, xt.device)
        with torch.no_grad():
            return teacher.head.denoise(teacher.logits(xt, t, t)).float()  # D^teacher_t(x_t), (B, L, V)

    def forward(self, model, x1):
        self.teacher(model, x1.device)  # refuses a missing teacher before any loss is computed
        return super().forward(model, x1)

    def read_teacher(self, model, device):
        """The teacher as the losses read it: with ``teacher_self_condition``, a self-conditioning teacher's every read
        is two passes, D_t(x | sg[D_t(x | 0)]) (:class:`SelfConditionedTeacher`); otherwise one, with D^ = 0."""
        teacher = self.teacher(model, device)
        if not self.teacher_self_condition:
            return teacher
        require_self_conditioned(teacher, "teacher_self_condition", "the teacher with its own first prediction")
        return SelfConditionedTeacher(teacher)

    def map_loss(self, model, state, xs, pairs, extra, x1, known):
        teacher = self.read_teacher(model, x1.device)
        xs = state.value(xs)  # (B, L, V): distill runs on the dense state
        if self.target == "lagrangian":
            residual = lagrangian_residual(model, xs, pairs.s, pairs.t, velocity_model=teacher, hold=known.hold)
            per_token = (residual**2).sum(-1)  # (B, L)
            weight = adaptive_weight(per_token, known=known.mask) if self.adaptive else None
            found = {"map": known.mean(per_token, weight), "map_residual": known.mean(per_token)}
            return lambda: found
        if self.target == "trajectory":
            target = trajectory_target(teacher, xs, pairs.us, pairs.ut, self.teacher_steps, hold=known.hold)
            return semigroup_term(model, state, xs, pairs.s, pairs.t, target, self.adaptive, known.mask)
        u = sample_middle(model.path, pairs, self.midpoint)  # drawn after x_s, as it always was
        target = semigroup_target(model, xs, pairs.s, u, pairs.t, short_model=teacher, short_gap=self.teacher_gap,
                                  state=state, hold=known.hold)
        return semigroup_term(model, state, xs, pairs.s, pairs.t, target, self.adaptive, known.mask)


@torch.no_grad()
def trajectory_target(teacher, xs: torch.Tensor, us: torch.Tensor, ut: torch.Tensor, steps: int, hold=None) -> torch.Tensor:
    """delta^teacher_{s,t}(x_s): the mean denoiser of the teacher's trajectory from s to t. (B, L, V)

    ``steps`` teacher evaluations: pieces [a, b] uniform in the path's uniform time u, each an exact map of the
    linear path, x <- ((1-b)/(1-a)) x + ((b-a)/(1-a)) D (the ODE's exponential integrator), with D the teacher's
    denoiser at the piece's midpoint m (reached with D_a: two evaluations a piece, second order; a last odd
    evaluation takes a first-order piece). Pieces compose by the semigroup rule delta_{s,b} = g delta_{s,a} +
    (1-g) D, g = (1-b)(a-s)/((1-a)(b-s)), so the target stays on the simplex and needs no division by t - s.
    ``hold`` (training for prompts, flowzoo.prompt.KnownRows.hold): the teacher reads every state of its trajectory
    with the known positions at their clean one-hot.
    """
    path = teacher.path
    pieces = [2] * (steps // 2) + [1] * (steps % 2)  # evaluations per piece
    s = path.time_from_uniform(us)
    x, delta, a, done = xs, None, s, 0
    for evals in pieces:
        done += evals
        b = path.time_from_uniform(us + (ut - us) * done / steps).clamp(min=a)
        if hold is not None:
            x = hold(x)
        D = teacher.head.denoise(teacher.logits(x, a, a)).float()  # (B, L, V)
        if evals == 2:
            m = path.time_from_uniform(us + (ut - us) * (done - 1) / steps).clamp(min=a, max=b)
            x_m = path.flow_map(x, D, a, m)
            D = teacher.head.denoise(teacher.logits(x_m if hold is None else hold(x_m), m, m)).float()
        g = expand_time(path.semigroup_weight(s, a, b))
        delta = D if delta is None else g * delta + (1 - g) * D
        x = path.flow_map(x, D, a, b)
        a = b
    return delta
