"""The distilled student's initialisation from its teacher (flowzoo.teachers): ``student_init="copy"`` copies every
weight; ``"euler_step"`` (FLM) makes the student's map X_{s,t} the teacher's Euler step from s to t."""

import pytest
import torch

from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM

V, L, B = 11, 6, 5
DIT = {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}
DDIT = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16, "dropout": 0.0}


def trained_ish_teacher(backbone: dict) -> FlowLM:
    """A flow with every weight moved off its initialisation: the adaLN and output layers are not zero, and neither is
    the gap embedder's output (as after training, where it is read at t - s = 0 only)."""
    torch.manual_seed(0)
    teacher = FlowLM(backbone=backbone, vocab_size=V)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return teacher


def student_of(teacher: FlowLM, backbone: dict, student_init: str) -> FlowLM:
    objective = {"name": "distill", "init_args": {"student_init": student_init}}
    student = FlowLM(backbone=backbone, vocab_size=V, objective=objective)
    student.attach_teacher(teacher)
    return student


def euler_step(teacher: FlowLM, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x + (t - s) b_s(x): one Euler step of the teacher's ODE from s to t. (B, L, V)"""
    b = teacher.path.velocity(x, teacher.denoise(x, s), s)
    return x + (t - s)[:, None, None] * b


def random_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.rand(n), torch.rand(n)
    return torch.minimum(a, b) * 0.95, torch.maximum(a, b) * 0.95 + 0.05


@pytest.mark.parametrize("kind, backbone", [("dit", {**DIT, "main_time": "source"}), ("ddit", {**DDIT, "source_time": "embedder"})])
def test_euler_step_init_makes_the_student_map_the_teachers_euler_step(kind, backbone):
    spec = {"name": kind, "init_args": backbone}
    teacher = trained_ish_teacher({"name": kind, "init_args": {k: v for k, v in backbone.items() if k != "source_time"}})
    if kind == "dit":
        gap = teacher.backbone.gap_embed(torch.zeros(1))
        assert gap.abs().max() > 0.1  # a trained teacher's gap embedding at 0 is not zero
    student = student_of(teacher, spec, "euler_step").eval()
    torch.manual_seed(1)
    x = teacher.path.sample_prior(B, L, V)
    for _ in range(3):
        s, t = random_pairs(B)
        x_s = x + s[:, None, None] * torch.randn_like(x)
        got = student.path.flow_map(x_s, student.denoise(x_s, t, s), s, t)  # X_{s,t}(x_s)
        want = euler_step(teacher, x_s, s, t)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the one-step map from noise is the teacher's one Euler step from noise, and the diagonal is the teacher's flow
    zero, one = torch.zeros(B), torch.ones(B)
    torch.testing.assert_close(student.path.flow_map(x, student.denoise(x, one, zero), zero, one), euler_step(teacher, x, zero, one),
                               rtol=1e-5, atol=1e-5)
    mid = torch.full((B,), 0.4)
    torch.testing.assert_close(student.denoise(x, mid), teacher.denoise(x, mid), rtol=1e-5, atol=1e-6)


def test_copy_keeps_every_teacher_weight_and_is_not_the_euler_step():
    """The old behaviour (the default): every weight copied, so the student reads the teacher with its gap embedding,
    which is not the Euler step once the gap embedder is not zero."""
    teacher = trained_ish_teacher({"name": "dit", "init_args": DIT})
    student = FlowLM(backbone={"name": "dit", "init_args": DIT}, vocab_size=V, objective="distill")
    assert student.objective.student_init == "copy"
    student.attach_teacher(teacher)
    for k, v in teacher.backbone.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[k], v), k
    euler = student_of(teacher, {"name": "dit", "init_args": {**DIT, "main_time": "source"}}, "euler_step")
    torch.manual_seed(2)
    x = teacher.path.sample_prior(B, L, V)
    zero, one = torch.zeros(B), torch.ones(B)
    copied, stepped = student.denoise(x, one, zero), euler.denoise(x, one, zero)
    assert (copied - stepped).abs().max() > 1e-3
    torch.testing.assert_close(stepped, teacher.denoise(x, zero), rtol=1e-5, atol=1e-6)


def test_euler_step_init_is_applied_once_and_survives_a_reload(tmp_path):
    teacher = trained_ish_teacher({"name": "dit", "init_args": DIT})
    spec = {"name": "dit", "init_args": {**DIT, "main_time": "source"}}
    student = student_of(teacher, spec, "euler_step")
    with torch.no_grad():
        student.backbone.gap_embed.mlp[-1].weight.add_(1.0)  # as after some training
    trained = {k: v.clone() for k, v in student.backbone.state_dict().items()}
    student.attach_teacher(teacher)  # a second hand-over (a resumed run) does not re-initialise
    assert all(torch.equal(v, trained[k]) for k, v in student.backbone.state_dict().items())


def test_an_euler_step_student_samples_with_any_flow_map_sampler():
    """generate() with a sampler other than the model's checks the parts it is given (no backbone among them): an
    ``euler_step`` student must not be refused there (it was: KeyError 'backbone' in check_compatible)."""
    teacher = trained_ish_teacher({"name": "dit", "init_args": DIT})
    student = student_of(teacher, {"name": "dit", "init_args": {**DIT, "main_time": "source"}}, "euler_step")
    out = student.generate(2, 6, sampler={"name": "flow_map", "init_args": {"steps": 2}}, seed=0)
    assert out.tokens.shape == (2, 6) and out.nfe == 2


def test_euler_step_init_refusals_are_one_clear_message():
    with pytest.raises(IncompatibleComponentsError, match="main_time=source"):
        FlowLM(backbone={"name": "dit", "init_args": DIT}, vocab_size=V,
               objective={"name": "distill", "init_args": {"student_init": "euler_step"}})
    with pytest.raises(IncompatibleComponentsError, match="source_time=embedder"):
        FlowLM(backbone={"name": "ddit", "init_args": DDIT}, vocab_size=V,
               objective={"name": "distill", "init_args": {"student_init": "euler_step"}})
    with pytest.raises(ValueError, match="no init_from"):
        FlowLM(backbone={"name": "dit", "init_args": {**DIT, "main_time": "source"}}, vocab_size=V,
               objective={"name": "distill", "init_args": {"student_init": "euler_step", "init_from": "x"}})
    with pytest.raises(ValueError, match="unknown student_init 'fresh'; choices: copy, euler_step"):
        FlowLM(backbone={"name": "dit", "init_args": DIT}, vocab_size=V, objective={"name": "distill", "init_args": {"student_init": "fresh"}})
    with pytest.raises(ValueError, match="unknown main_time"):
        FlowLM(backbone={"name": "dit", "init_args": {**DIT, "main_time": "middle"}}, vocab_size=V)


def test_main_time_source_is_the_same_flow_on_the_diagonal():
    """A flow (s = t) is the same network with either main_time, so a teacher trained with one is a flow for both."""
    torch.manual_seed(3)
    a = FlowLM(backbone={"name": "dit", "init_args": DIT}, vocab_size=V)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.2 * torch.randn_like(p))
    b = FlowLM(backbone={"name": "dit", "init_args": {**DIT, "main_time": "source"}}, vocab_size=V)
    b.load_state_dict(a.state_dict())
    x, t, s = torch.randn(B, L, V), torch.rand(B), torch.rand(B) * 0.5
    torch.testing.assert_close(a.denoise(x, t), b.denoise(x, t))
    assert (a.denoise(x, t, s * t) - b.denoise(x, t, s * t)).abs().max() > 1e-4  # off it, they read different times
