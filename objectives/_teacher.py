"""Frozen teachers handed over by the model: :class:`FrozenTeacher` (distill, policy_gradient) and
:class:`RoundTeacher`, which the student replaces every round (SDTT, DCD)."""

from __future__ import annotations

import torch

from flowzoo.errors import CheckpointError
from flowzoo.state import self_conditioned


class FrozenTeacher:
    """Mixin for an ``nn.Module`` objective that reads a frozen model (a teacher, a base model) named by ``teacher_path``.

    The objective loads nothing: the model (:mod:`flowzoo.teachers`, before the first loss) loads the checkpoint,
    checks it against the student (vocabulary, path), hands it over (:meth:`set_teacher`, kept out of the module tree:
    never saved with the student, never moved by ``.to()``) and once copies it (``init_from_teacher``) or the
    ``init_from`` model into the student; ``teacher_copied``, a buffer saved with the student, remembers that, so a
    resumed or reloaded student is never overwritten.
    """

    needs_teacher = True  # flowzoo.teachers resolves it

    def init_teacher(self, teacher: str, init_from_teacher: bool, init_from: str) -> None:
        self.teacher_path, self.init_from_teacher, self.init_from = teacher, init_from_teacher, init_from
        self.register_buffer("teacher_copied", torch.zeros((), dtype=torch.bool))
        object.__setattr__(self, "_teacher", None)  # not a submodule: not saved, not moved by .to()

    @property
    def teacher_model(self):
        """The teacher handed over by the model (flowzoo.teachers), or None before that."""
        return self._teacher

    def set_teacher(self, teacher) -> None:
        """Use an already loaded model as the teacher (frozen, kept outside the module tree)."""
        if teacher is self._teacher:
            return
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)

    def teacher(self, model=None, device=None):
        """The teacher (``model``, ``device``: unused, the model has already put it there)."""
        if self._teacher is None:
            raise CheckpointError(
                f"the {self.registry_name} objective needs a teacher: set --model.objective.teacher=PATH (a .ckpt or "
                "save_pretrained directory); FlowLM loads it before the first loss (model.attach_teacher() outside a Trainer)"
            )
        return self._teacher


def require_self_conditioned(teacher, option: str, reads: str) -> None:
    """Refuse ``option=true`` (which ``reads``: what it reads with a first prediction) for a ``teacher`` trained
    without self-conditioning."""
    if not self_conditioned(teacher):
        raise ValueError(f"{option}=true reads {reads}, but this teacher was trained without self-conditioning; "
                         f"leave {option}=false")


class SelfConditionedTeacher:
    """A self-conditioning teacher read as it was trained: D_t(x | sg[D_t(x | 0)]), its first pass's prediction fed
    to a second (two forwards a read). Read once, with D^ = 0, it gives the half of its training without
    self-conditioning. Every other attribute is the wrapped model's."""

    def __init__(self, model) -> None:
        self.model = model

    def logits(self, x, t, s=None, self_cond=None):
        if self_cond is None:  # D^ = D_t(x | 0), (B, L, V)
            self_cond = self.model.head.denoise(self.model.logits(x, t, s)).detach()
        return self.model.logits(x, t, s, self_cond=self_cond)

    def __getattr__(self, name):
        return getattr(self.model, name)


class RoundTeacher(FrozenTeacher):
    """Mixin for an ``nn.Module`` objective distilled in rounds from the checkpoint ``teacher_path`` names.

    The objective loads nothing: while it is training, the model (:mod:`flowzoo.teachers`, before each loss) loads the
    teacher, checks it, hands it over (:meth:`set_teacher`, kept out of the module tree, never saved with the student)
    and copies it into the student once (``teacher_copied``, a buffer, so a resumed or reloaded student is never
    overwritten). In evaluation the objectives need no teacher (``needs_teacher`` is False). Round
    r = min(global step // ``round_steps``, ``rounds``) (``rounds`` = 0: no limit), a buffer saved with the student;
    when a new round starts (:meth:`advance`) the student's current weights become the teacher's. A run resumed in round
    r > 0 takes the student's weights at resume time as that round's teacher (the round-start weights are not saved).
    """

    init_from_teacher = True  # read by flowzoo.teachers.attach_teacher: the student starts as the teacher
    init_from = ""

    @property
    def needs_teacher(self) -> bool:
        """Only the training loss reads the teacher (evaluation reports the student's own NELBO)."""
        return self.training

    def init_rounds(self, teacher: str, round_steps: int, rounds: int) -> None:
        if round_steps < 1:
            raise ValueError(f"round_steps must be at least 1, got {round_steps}")
        if rounds < 0:
            raise ValueError(f"rounds must be non-negative (0: no limit), got {rounds}")
        self.round_steps, self.rounds = round_steps, rounds
        self.register_buffer("round", torch.zeros((), dtype=torch.long))
        self.init_teacher(teacher, True, "")
        object.__setattr__(self, "_teacher_round", 0)  # the round whose teacher the held weights are

    def set_teacher(self, teacher) -> None:
        """Use an already loaded model as the teacher (frozen, outside the module tree): the checkpoint's weights are
        round 0's teacher."""
        if teacher is self._teacher:
            return
        super().set_teacher(teacher)
        object.__setattr__(self, "_teacher_round", 0)

    def round_at(self, step: int) -> int:
        r = step // self.round_steps
        return min(r, self.rounds) if self.rounds else r

    def advance(self, model):
        """The teacher of the current round: on a new round (or a resume in round r > 0) the student's weights first
        become the teacher's."""
        teacher = self.teacher()
        r = self.round_at(model.global_step)
        if r > int(self.round):
            self.round.fill_(r)
        if int(self.round) != self._teacher_round:
            weights, into = model.backbone.state_dict(), teacher.backbone.state_dict()
            if set(weights) != set(into) or any(weights[k].shape != into[k].shape for k in weights):
                raise CheckpointError("the student's backbone must have the teacher's architecture to become its teacher")
            with torch.no_grad():
                for k, v in weights.items():
                    into[k].copy_(v)
            object.__setattr__(self, "_teacher_round", int(self.round))
        return teacher
