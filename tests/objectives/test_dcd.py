"""DCD (Duo's discrete consistency distillation) against a transcription of Duo's ``Distillation.nll``, and Duo + DCD
trained from the command line.

Measured: per-token loss against the transcription, same noise and times, max abs difference 0.0 for kl-bwd and
kl-fwd (the same float32 operations in the same order).
"""

import pytest
import torch
import torch.nn.functional as F

from flowzoo.module import FlowLM
from flowzoo.objectives.dcd import dcd_loss
from flowzoo.paths.uniform import argmax_alpha
from helpers import TINY_NETWORK

V, L = 12, 10


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _duo_distillation_nll(x0, t, dt, gamma_min, gamma_max, alpha_of_gamma, epsilon, forward, forward_teacher, loss_type):
    """algo.py Distillation.nll with _sample_trajectory written in (t already drawn by _sample_t; Duo's time)."""
    t = torch.clip(t + dt, 0, 1)
    gamma_t = gamma_min + t * (gamma_max - gamma_min)
    gamma_s = gamma_min + (t - dt) * (gamma_max - gamma_min)
    usdm_alpha_t = alpha_of_gamma(gamma_t).unsqueeze(-1)
    usdm_alpha_s = alpha_of_gamma(gamma_s).unsqueeze(-1)
    x0 = F.one_hot(x0, V).float()
    g_t, g_s = gamma_t[:, None, None], gamma_s[:, None, None]
    xt = torch.sigmoid(-g_t).sqrt() * x0 + torch.sigmoid(g_t).sqrt() * epsilon
    xs = torch.sigmoid(-g_s).sqrt() * x0 + torch.sigmoid(g_s).sqrt() * epsilon
    student = forward(xt.argmax(-1), -torch.log(usdm_alpha_t))
    teacher = forward_teacher(xs.argmax(-1), -torch.log(usdm_alpha_s))
    if loss_type == "kl-fwd":
        return (teacher.exp() * (teacher - student)).sum(-1)
    return (student.exp() * (student - teacher)).sum(-1)


@pytest.mark.parametrize("kind", ["kl-bwd", "kl-fwd"])
def test_dcd_loss_matches_duo(kind):
    torch.manual_seed(0)
    B = 32
    emb_s, emb_t = torch.randn(V, V), torch.randn(V, V)

    def net(emb):  # a network of (ids, sigma): sigma = -log alpha (B, 1) as Duo conditions it
        return lambda ids, sigma: torch.log_softmax(emb[ids] * (1 + sigma.reshape(-1, 1, 1).float()), -1)

    x1 = torch.randint(0, V, (B, L))
    tau = torch.rand(B) * (1 - 1e-3) + 1e-3
    noise = torch.randn(B, L, V)
    dt = 4 / 512

    def alpha_of_gamma(gamma):
        return argmax_alpha(gamma.double(), V)[0]

    ref = _duo_distillation_nll(x1, tau, dt, -4.0, -1.0, alpha_of_gamma, noise, net(emb_s), net(emb_t), kind)
    ours = dcd_loss(lambda x, a: net(emb_s)(x, -torch.log(a)), lambda x, a: net(emb_t)(x, -torch.log(a)), x1, tau, dt, -4.0, -1.0, noise, kind)
    assert (ours - ref).abs().max().item() < 1e-6
    # the student and teacher read different, nested states: the teacher's is less noisy
    assert torch.equal(ours, ours) and (ours > 0).all()


def test_duo_then_dcd_from_the_command_line(tmp_path):
    from flowzoo.cli import main

    common = [
        "--model.path=uniform", "--model.sampler=uniform_ancestral", "--model.sampler.steps=4", "--model.sampler.noise_removal=greedy",
        *TINY_NETWORK,
        f"--data.num_states={V}", "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
    ]
    code = main(["fit", *common, "--model.objective=duo", "--model.objective.curriculum_start=1", "--model.objective.curriculum_end=2",
                 "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'duo'}"])
    assert code == 0
    metrics = next((tmp_path / "duo").rglob("metrics.csv")).read_text()
    assert "val/ppl_bound" in metrics and "val/sample_valid_transitions" in metrics
    teacher = next((tmp_path / "duo").rglob("*.ckpt"))
    code = main(["fit", *common, "--model.objective=dcd", f"--model.objective.teacher={teacher}", "--model.objective.round_steps=2",
                 "--trainer.max_steps=5", f"--trainer.default_root_dir={tmp_path / 'dcd'}"])
    assert code == 0
    state = torch.load(next((tmp_path / "dcd").rglob("*.ckpt")), weights_only=True)["state_dict"]
    assert int(state["objective.round"]) == 2 and bool(state["objective.teacher_copied"])
    assert not any("_teacher" in k for k in state)


def test_dcd_student_starts_as_its_teacher(tmp_path):
    from flowzoo.checkpoints import save_pretrained

    tiny = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
    teacher = FlowLM(backbone=tiny, path="uniform", objective="duo", sampler="uniform_ancestral", vocab_size=V)
    with torch.no_grad():
        for p in teacher.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_pretrained(teacher, tmp_path / "t")
    student = FlowLM(backbone=tiny, path="uniform", objective={"name": "dcd", "init_args": {"teacher": str(tmp_path / "t")}},
                     sampler="uniform_ancestral", vocab_size=V)
    student.prepare_objective()  # what training_step does before the loss
    out = student.objective(student, torch.randint(0, V, (8, L)))
    assert torch.isfinite(out["loss"]) and out["dt"].item() == 1 / 512
    x, t = torch.randint(0, V, (2, L)), torch.full((2,), 0.4)
    assert torch.allclose(student.logits(x, t), teacher.logits(x, t), atol=1e-6)


def test_in_evaluation_the_student_reports_its_nelbo_without_a_teacher():
    from flowzoo.objectives.duo import Duo

    tiny = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
    student = FlowLM(backbone=tiny, path="uniform", objective={"name": "dcd", "init_args": {"teacher": "/nonexistent/teacher"}},
                     sampler="uniform_ancestral", vocab_size=V).eval()
    x1 = torch.randint(0, V, (8, L))
    torch.manual_seed(5)
    out = student.objective(student, x1)
    torch.manual_seed(5)
    assert torch.allclose(out["loss"], Duo()(student, x1)["loss"])
