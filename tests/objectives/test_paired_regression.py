"""The paired_regression objective: delta_{0,1}(eps) fitted to a frozen flow map's k-step draw from the same eps."""

import pytest
import torch

from flowzoo.checkpoints import load_checkpoint, save_pretrained
from flowzoo.errors import CheckpointError
from flowzoo.module import FlowLM
from flowzoo.objectives.paired_regression import PairedRegression, one_step_logits
from flowzoo.samplers.flow_map import FlowMapSampler
from helpers import L, TINY, TINY_NETWORK, V, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _map(**parts) -> FlowLM:
    """A flow map (lsd) off the zero initialisation, so its draws vary with the noise."""
    model = small_model(objective="lsd", sampler="flow_map", **parts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_the_targets_are_the_teachers_k_step_draws_and_the_loss_reaches_the_student_only():
    torch.manual_seed(0)
    teacher, student = _map(), _map()
    eps = teacher.path.sample_prior(6, L, V, generator=torch.Generator().manual_seed(1))
    for k in (1, 2, 4):
        objective = PairedRegression(teacher_steps=k)
        objective.set_teacher(teacher)
        aim = objective.targets(eps)
        assert torch.equal(aim, FlowMapSampler(steps=k).sample(teacher, 6, L, generator=torch.Generator().manual_seed(1)).tokens)
    out = objective.regression(student, eps)  # k = 4
    logits = one_step_logits(student, eps)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), aim.flatten())
    assert torch.allclose(out["loss"], expected)
    assert float(out["agreement"]) == pytest.approx(float((logits.argmax(-1) == aim).float().mean()))
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert torch.equal(objective.targets(eps), aim)  # and its targets do not move


def test_a_few_steps_bring_the_one_step_draw_toward_the_teachers_four_step_draw():
    torch.manual_seed(0)
    teacher, student = _map(), _map()
    objective = PairedRegression(teacher_steps=4)
    objective.set_teacher(teacher)
    held = teacher.path.sample_prior(32, L, V, generator=torch.Generator().manual_seed(9))  # held-out noise
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    with torch.no_grad():
        first = objective.regression(student, held)
    for _ in range(40):
        loss = objective(student, torch.zeros(16, L, dtype=torch.long))["loss"]  # fresh noise every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = objective.regression(student, held)
    assert float(last["loss"]) < 0.7 * float(first["loss"])  # on noise it never trained on
    assert float(first["agreement"]) < 0.1 < 0.3 < float(last["agreement"])


def test_the_teacher_must_be_a_flow_map_and_the_options_valid():
    objective = PairedRegression()
    with pytest.raises(CheckpointError, match="teacher must be a flow map .* trained by 'flow_matching'"):
        objective.set_teacher(small_model())
    with pytest.raises(CheckpointError, match="needs a teacher: set --model.objective.teacher"):
        objective.targets(torch.zeros(1, L, V))
    for bad in ({"teacher_steps": 0}, {"num_generated": -1}):
        with pytest.raises(ValueError, match="teacher_steps >= 1 and num_generated >= 0"):
            PairedRegression(**bad)


def test_paired_regression_from_the_command_line_starts_as_its_teacher_and_keeps_it_out_of_the_checkpoint(tmp_path):
    from flowzoo.cli import main

    torch.manual_seed(0)
    teacher = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}, vocab_size=16,
                     objective="lsd", sampler="flow_map")
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_pretrained(teacher, tmp_path / "teacher")
    run = [
        *TINY_NETWORK, "--data.num_states=16", "--data.seq_len=8", "--data.num_train=32", "--data.num_val=8", "--data.batch_size=8",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=0",
        "--model.sampler=flow_map", "--model.objective=paired_regression", f"--model.objective.teacher={tmp_path / 'teacher'}",
        "--model.objective.teacher_steps=2", "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    assert main(["fit", *run]) == 0
    checkpoint = sorted((tmp_path / "run").rglob("*.ckpt"))[-1]
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert bool(state["objective.teacher_copied"]) and not any("_teacher" in k for k in state)
    student = load_checkpoint(checkpoint)
    assert student.objective.teacher_steps == 2
    changed = any(not torch.equal(a, b) for a, b in zip(student.backbone.state_dict().values(), teacher.backbone.state_dict().values()))
    assert changed  # it started as the teacher (init_from_teacher) and trained three steps
