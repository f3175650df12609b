"""The distill objective: a student that saves without its teacher, deeper students, the Lagrangian target, init_from."""

import shutil

import pytest
import torch

from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.errors import CheckpointError
from flowzoo.module import FlowLM
from helpers import B, L, TINY, V, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def test_distilled_student_saves_without_the_teacher_and_reloads(tmp_path):
    teacher = small_model()
    save_pretrained(teacher, tmp_path / "teacher")
    student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "distill", "init_args": {"teacher": str(tmp_path / "teacher")}})
    x1 = torch.randint(0, V, (B, L))
    student.prepare_objective()  # what training_step does first: the model loads the teacher its objective names
    out = student.objective(student, x1)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and "map_kl" in out
    # the student starts as the teacher's flow
    x, t = torch.randn(2, L, V), torch.rand(2)
    assert torch.allclose(student.logits(x, t), student.objective._teacher.logits(x, t), atol=1e-5)
    keys = student.state_dict().keys()
    assert not any("teacher" in k and k != "objective.teacher_copied" for k in keys)
    save_pretrained(student, tmp_path / "student")
    shutil.rmtree(tmp_path / "teacher")  # the student no longer needs its teacher
    with torch.no_grad():
        for p in student.backbone.parameters():
            p.add_(0.01)  # pretend training moved it away from the teacher
    save_pretrained(student, tmp_path / "student")
    again = from_pretrained(tmp_path / "student")
    assert bool(again.objective.teacher_copied)
    assert torch.allclose(again.logits(x, t, t * 0), student.logits(x, t, t * 0), atol=1e-5)
    # a reloaded student is never overwritten by its teacher again
    again.attach_teacher(small_model())
    before = again.logits(x, t).clone()
    again.objective(again, x1)
    assert torch.allclose(again.logits(x, t), before)


def test_a_deeper_student_starts_as_its_teacher_and_other_shapes_are_refused():
    teacher = small_model()
    deeper = {**TINY, "init_args": {**TINY["init_args"], "depth": TINY["init_args"]["depth"] + 2}}
    student = FlowLM(backbone=deeper, vocab_size=V, objective="distill")
    student.attach_teacher(teacher)  # copies the teacher into the student
    student.objective(student, torch.randint(0, V, (B, L)))["loss"].backward()
    assert bool(student.objective.teacher_copied)
    x, t = torch.randn(2, L, V), torch.rand(2)
    fresh = FlowLM(backbone=deeper, vocab_size=V, objective="distill")
    fresh.attach_teacher(teacher)
    assert torch.allclose(fresh.logits(x, t), teacher.logits(x, t), atol=1e-5)  # extra blocks are the identity
    for other in ({"width": 48, "heads": 4}, {"depth": 1}):
        bad = FlowLM(backbone={**TINY, "init_args": {**TINY["init_args"], **other}}, vocab_size=V, objective="distill")
        with pytest.raises(CheckpointError, match="architecture"):
            bad.attach_teacher(teacher)
    moved = FlowLM(backbone=deeper, vocab_size=V, objective="distill")
    with torch.no_grad():
        moved.backbone.blocks[-1].ada.weight.add_(0.1)  # an extra block that is not the identity
    with pytest.raises(CheckpointError, match="identity"):
        moved.attach_teacher(teacher)


def test_distill_lagrangian_target_uses_the_teacher_velocity():
    teacher = small_model()
    student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "distill", "init_args": {"target": "lagrangian", "diagonal_share": 0.0}})
    student.attach_teacher(teacher)
    out = student.objective(student, torch.randint(0, V, (B, L)))
    assert torch.isfinite(out["loss"]) and out["map"] > 0
    with pytest.raises(Exception, match="needs a teacher"):
        FlowLM(backbone=TINY, vocab_size=V, objective="distill").objective(student, torch.randint(0, V, (B, L)))


def test_distill_refuses_a_teacher_on_another_path():
    teacher = small_model()
    student = FlowLM(backbone=TINY, vocab_size=V, path={"name": "linear", "init_args": {"time": "tau"}}, objective="distill")
    with pytest.raises(CheckpointError, match="path"):
        student.attach_teacher(teacher)


def test_init_from_starts_the_student_from_another_model_than_its_teacher(monkeypatch):
    import flowzoo.teachers

    teacher = small_model()
    models = {"other": small_model(), "wrong_vocab": FlowLM(backbone=TINY, vocab_size=V + 1)}
    monkeypatch.setattr(flowzoo.teachers, "load_model", lambda name, model: models[name])
    x, t = torch.randn(2, L, V), torch.rand(2)
    for name in models:
        student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "distill", "init_args": {"init_from": name}})
        if name == "wrong_vocab":
            with pytest.raises(CheckpointError, match="init_from model vocabulary"):
                student.attach_teacher(teacher)
            continue
        student.attach_teacher(teacher)
        assert torch.allclose(student.logits(x, t), models[name].logits(x, t), atol=1e-5)
        assert not torch.allclose(student.logits(x, t), teacher.logits(x, t), atol=1e-3)


def test_a_self_conditioning_teacher_is_read_with_its_own_first_prediction():
    """teacher_self_condition: every teacher read is D_t(x | sg[D_t(x | 0)]), as in its training; the default reads
    it once with D^ = 0; a teacher without self-conditioning is refused with the option."""
    torch.manual_seed(0)
    conditioned = {**TINY, "init_args": {**TINY["init_args"], "self_condition": True}}
    teacher = FlowLM(backbone=conditioned, vocab_size=V)
    with torch.no_grad():  # random weights: W_sc and the adaLN are zero-initialised, which would hide the second pass
        for p in teacher.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    xt, t, x1 = torch.randn(B, L, V), torch.rand(B), torch.randint(0, V, (B, L))
    with torch.no_grad():
        once = teacher.head.denoise(teacher.logits(xt, t, t))
        twice = teacher.head.denoise(teacher.logits(xt, t, t, self_cond=once))
    reads = {}
    for flag in (False, True):
        student = FlowLM(backbone=conditioned, vocab_size=V,
                         objective={"name": "distill", "init_args": {"teacher_self_condition": flag}})
        student.attach_teacher(teacher)
        reads[flag] = student.objective.diagonal_target(student, xt, t, x1)
        out = student.objective(student, x1)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    torch.testing.assert_close(reads[False], once)
    torch.testing.assert_close(reads[True], twice)
    assert not torch.allclose(once, twice, atol=1e-3)
    plain = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "distill", "init_args": {"teacher_self_condition": True}})
    plain.attach_teacher(small_model())
    with pytest.raises(ValueError, match="trained without self-conditioning"):
        plain.objective(plain, x1)
