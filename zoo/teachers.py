"""Teachers and critics of the distillation objectives, resolved where the model is built and handed to the objective.

An objective computes losses; it loads no model and runs no optimiser. ``distill`` (and ``dmd``, ``refine`` on top
of it) names its teacher in its config (``--model.objective.teacher=PATH``) and reads it through
``objective.teacher()``; :func:`attach_teacher` loads it (once), checks that it shares the student's vocabulary and
path, freezes it and hands it over with ``objective.set_teacher``, kept outside the module tree (never in the
student's state dict or checkpoint), and copies the teacher's (or ``init_from``'s) backbone into the student once.
``dmd``'s critic, a copy of the teacher trained online on the one-step samples, is a :class:`Critic`: its network and
its Adam belong to the model (``FlowLM.critic``), kept out of the state dict (a training checkpoint carries them
beside it, to resume); ``FlowLM.train_critic`` steps it on the losses
``objective.critic_loss`` gives. :class:`~flowzoo.module.FlowLM` calls :func:`prepare_objective` before each loss.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from flowzoo import registry
from flowzoo.errors import CheckpointError


def needs_teacher(objective) -> bool:
    return bool(getattr(objective, "needs_teacher", False))


def check_same_space(source, model, what: str) -> None:
    """A teacher (or initialising model) must share the student's vocabulary and path."""
    if source.vocab_size != model.vocab_size:
        raise CheckpointError(f"{what} vocabulary {source.vocab_size} differs from the student's {model.vocab_size}")
    if registry.spec(source.path) != registry.spec(model.path):
        raise CheckpointError(
            f"the {what} was trained on the path {registry.spec(source.path)} but the student uses {registry.spec(model.path)}; "
            f"give the student the {what}'s path (its time and noise define what its D means)"
        )


def load_model(path: str, model):
    """A model of ``model``'s class (FlowLM) from a .ckpt, save_pretrained directory or Hub repo id."""
    from flowzoo.checkpoints.pretrained import load_checkpoint

    return load_checkpoint(path, model_class=type(model))


def load_teacher(model):
    """The teacher ``model.objective``'s config names."""
    objective = model.objective
    if not objective.teacher_path:
        raise CheckpointError(f"the {objective.registry_name} objective needs a teacher: set --model.objective.teacher=PATH (a .ckpt or save_pretrained directory)")
    return load_model(objective.teacher_path, model)


def attach_teacher(model, teacher=None) -> None:
    """Give ``model.objective`` its teacher: ``teacher``, the one already handed over, or the one its config names
    (loaded now). Checked against the student, moved to its device; then, once, the student's backbone is
    initialised from the teacher (``init_from_teacher``) or from the ``init_from`` model; with the objective's
    ``student_init="euler_step"`` the copy is then made to read delta_{s,t}(x) = D_s(x) (``backbone.euler_step_init``),
    so the student starts as the teacher's Euler step."""
    objective = model.objective
    if teacher is None:
        teacher = objective.teacher_model or load_teacher(model)
    check_same_space(teacher, model, "teacher")
    objective.set_teacher(teacher)
    weight = next(teacher.parameters(), None)  # None: a teacher without weights (the exact reference)
    if weight is not None and weight.device != model.device:
        teacher.to(model.device)
    if (objective.init_from_teacher or objective.init_from) and not bool(objective.teacher_copied):
        source = teacher
        if objective.init_from:
            source = load_model(objective.init_from, model)
            check_same_space(source, model, "init_from model")
        copy_backbone(model, source)
        if getattr(objective, "student_init", "copy") == "euler_step":
            model.backbone.euler_step_init()
        objective.teacher_copied.fill_(True)


def prepare_objective(model) -> None:
    """What the objective needs from outside the model, before its loss: a no-op but for teacher-based objectives,
    whose teacher is loaded on the first call (at the same point of the random stream as the loss's first draw), and
    reward-driven ones, whose reward is bound and its network loaded."""
    if needs_teacher(model.objective):
        attach_teacher(model)
    prepare_reward(model)


@contextlib.contextmanager
def off_stream_when_resumed(model):
    """Where a teacher, critic or reward network is built (weight initialisation draws from torch's generator): a
    fresh run builds them at step 0 and every later draw follows; a run resumed at step k > 0 builds them again, but
    its checkpoint's generator state already follows those draws, so there the build runs on a forked stream and the
    resumed run draws the noise and times the uninterrupted one drew."""
    if model.global_step == 0:
        yield
        return
    with torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device]):
        yield


def prepare_reward(model) -> None:
    """The reward of a reward-driven objective (``reward``, ``policy_gradient``): bound to the model's vocabulary and
    its network (a judge's, a classifier's) loaded as a model of the model's class, once; the objective loads nothing."""
    reward = getattr(model.objective, "reward", None)
    if reward is None or not hasattr(reward, "resolve"):
        return
    if reward.vocab_size is None:
        reward.bind(model.vocab_size)
    reward.resolve(model)


def copy_backbone(model, source) -> None:
    """Copy the backbone of ``source`` (the teacher, or the ``init_from`` model) into the student. A deeper
    student (more ``blocks.<i>.`` entries, the rest alike) gets the source's blocks first and keeps its own extra
    blocks, which a DiT starts as the identity (adaLN-zero gates), so the student starts as the source's function."""
    student = model.backbone.state_dict()
    weights = source.backbone.state_dict()
    extra = set(student) - set(weights)
    neutral = getattr(model.backbone, "neutral_extras", None)  # e.g. ddit's zero-start second time embedder
    extra -= set(neutral(extra)) if callable(neutral) else set()
    if set(weights) - set(student) or any(student[k].shape != weights[k].shape for k in weights) or any(
        not k.startswith("blocks.") for k in extra
    ):
        raise CheckpointError("init_from_teacher needs the student's backbone to have the source's architecture (or more blocks)")
    if extra and not identity_blocks(model.backbone, extra):
        raise CheckpointError("init_from_teacher: the student's extra blocks must start as the identity (zero adaLN gates)")
    with torch.no_grad():
        for k, v in weights.items():
            student[k].copy_(v)


def identity_blocks(backbone, keys) -> bool:
    """Whether the blocks named in ``keys`` have all-zero adaLN modulation (a DiT block is then the identity)."""
    blocks = {int(k.split(".")[1]) for k in keys}
    return all(
        hasattr(backbone.blocks[i], "ada") and not backbone.blocks[i].ada.weight.any() and not backbone.blocks[i].ada.bias.any()
        for i in blocks
    )


class Critic:
    """``dmd``'s fake-score denoiser: a trainable copy of the teacher (with ``gan_weight``, plus a linear
    discriminator head on its hidden states) and its Adam (the objective's ``critic_lr``, 0: the model's lr; the
    model's betas). Held by the model outside its module tree (never in its state dict or a ``save_pretrained``
    folder); a training checkpoint keeps it beside (:meth:`state_dict`), so a resumed run goes on with the critic it
    had. Under DDP each rank trains its own and rank 0's is saved."""

    def __init__(self, model) -> None:
        objective = model.objective
        network = copy.deepcopy(objective.teacher()).train()
        if objective.gan_weight:
            network.discriminator = torch.nn.Linear(network.backbone.width, 1).to(next(network.parameters()).device)
        for p in network.parameters():
            p.requires_grad_(True)
        self.network = network
        self.optimizer = torch.optim.Adam(network.parameters(), lr=objective.critic_lr or model.lr, betas=model.betas)

    def train(self, model, sample: torch.Tensor, data: torch.Tensor | None = None) -> dict[str, Any]:
        """``critic_steps`` Adam steps on ``objective.critic_loss``, the first on ``sample`` and each further one on
        fresh one-step samples of the current map (DMD2's several critic updates per generator update)."""
        objective = model.objective
        n, length = sample.shape[:2]
        for i in range(objective.critic_steps):
            if i:
                with torch.no_grad():
                    sample = objective.generate(model, n, length, sample.device)[2]
            losses = objective.critic_loss(model, self.network, sample, data)
            self.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.optimizer.step()
        return {k: v.detach() for k, v in losses.items() if k != "total"}

    def state_dict(self) -> dict[str, Any]:
        """The network's weights and its Adam's state: what a training checkpoint keeps to resume the critic."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; a critic of another shape (the run's ``dmd`` settings changed, e.g.
        ``gan_weight`` turned on, which adds the discriminator) is refused before anything is loaded."""
        from flowzoo.checkpoints.pretrained import state_mismatch

        detail = state_mismatch(self.network.state_dict(), state["network"], against="this run's critic")
        if detail:
            raise CheckpointError(
                f"the checkpoint's dmd critic does not fit this run's critic ({detail}): resume with the dmd settings "
                "it was trained with, or start a new run from it with --model.objective.init_from (the critic restarts "
                "from the teacher)"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
