"""A frozen teacher that the student replaces every round (SDTT, DCD): loading, checks, the round counter."""

from __future__ import annotations

import torch

from flowzoo import registry
from flowzoo.errors import CheckpointError


def check_same_space(source, model, what: str) -> None:
    """A teacher must share the student's vocabulary and path (its time and noise define what its prediction means)."""
    if source.vocab_size != model.vocab_size:
        raise CheckpointError(f"{what} vocabulary {source.vocab_size} differs from the student's {model.vocab_size}")
    if registry.spec(source.path) != registry.spec(model.path):
        raise CheckpointError(
            f"the {what} was trained on the path {registry.spec(source.path)} but the student uses {registry.spec(model.path)}; "
            f"give the student the {what}'s path"
        )


class RoundTeacher:
    """Mixin for an ``nn.Module`` objective distilled in rounds from a checkpoint ``teacher_path``.

    The teacher is loaded on first use and kept out of the module tree (never saved with the student); the student
    starts as a copy of it (a buffer remembers that, so a resumed or reloaded student is never overwritten). Round
    r = min(global step // ``round_steps``, ``rounds``) (``rounds`` = 0: no limit); when a new round starts the
    student's current weights become the teacher's. The round is a buffer saved with the student; a run resumed
    mid-round r > 0 takes the student's weights at resume time as that round's teacher (the round-start weights are
    not saved).
    """

    def init_rounds(self, teacher: str, round_steps: int, rounds: int) -> None:
        if round_steps < 1:
            raise ValueError(f"round_steps must be at least 1, got {round_steps}")
        if rounds < 0:
            raise ValueError(f"rounds must be non-negative (0: no limit), got {rounds}")
        self.teacher_path, self.round_steps, self.rounds = teacher, round_steps, rounds
        self.register_buffer("round", torch.zeros((), dtype=torch.long))
        self.register_buffer("teacher_copied", torch.zeros((), dtype=torch.bool))
        object.__setattr__(self, "_teacher", None)  # not a submodule: not saved, not moved by .to()

    def set_teacher(self, teacher) -> None:
        """Use an already loaded model as the teacher (frozen, kept outside the module tree)."""
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)

    def round_at(self, step: int) -> int:
        r = step // self.round_steps
        return min(r, self.rounds) if self.rounds else r

    def teacher(self, model, device):
        """The teacher on ``device``, after the student has been initialised from it and rounds have advanced."""
        from flowzoo.checkpoints import load_checkpoint

        name = type(self).__name__
        if self._teacher is None:
            if not self.teacher_path:
                raise CheckpointError(f"the {name} objective needs a teacher: set --model.objective.teacher=PATH (a .ckpt or save_pretrained directory)")
            self.set_teacher(load_checkpoint(self.teacher_path))
            if int(self.round) > 0:  # resumed mid-distillation: the student is the best stand-in for this round's teacher
                self._student_to_teacher(model)
        teacher = self._teacher
        check_same_space(teacher, model, "teacher")
        weight = next(teacher.parameters(), None)
        if weight is not None and weight.device != device:
            teacher.to(device)
        if not bool(self.teacher_copied):
            self._copy(teacher.backbone, model.backbone, "the student's backbone must have the teacher's architecture")
            self.teacher_copied.fill_(True)
        if model.training:
            r = self.round_at(model.global_step)
            if r > int(self.round):
                self._student_to_teacher(model)
                self.round.fill_(r)
        return teacher

    def _student_to_teacher(self, model) -> None:
        self._copy(model.backbone, self._teacher.backbone, "the teacher's backbone must have the student's architecture")

    @staticmethod
    def _copy(source, target, message: str) -> None:
        weights, into = source.state_dict(), target.state_dict()
        if set(weights) != set(into) or any(weights[k].shape != into[k].shape for k in weights):
            raise CheckpointError(message)
        with torch.no_grad():
            for k, v in weights.items():
                into[k].copy_(v)
