"""SDTT for MDLM: the teacher's targets and the divergences against a transcription of SDTT's code
(jdeschena/sdtt, core/distill/multi_round_sdtt.py, core/sampling/ancestral.py); rounds, teacher loading, CLI.

Measured (random teacher, the same seeded draws on both sides, float32): targets at [MASK] positions max abs
difference 1.9e-6 (SDTT's SUBS renormalises over V + 1 columns, one of them at -1e6); the batch-mean divergences
against SDTT's ``_bwd_kl`` 0.0 and ``_fwd_kl`` 2.4e-7.
"""

import pytest
import torch
import torch.nn.functional as F

from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.errors import CheckpointError, IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.objectives.sdtt import divergence, teacher_targets
from flowzoo.paths.masked import MaskedPath
from helpers import TINY_NETWORK

V, L = 12, 10
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
NEG_INF = -1000000.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _mdlm(seed=0):
    torch.manual_seed(seed)
    model = FlowLM(backbone=TINY, path="masked", objective="mdlm", sampler={"name": "ancestral", "init_args": {"steps": 8}}, vocab_size=V)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


class _SeededDraw:
    """Exponential-race draws from unnormalised q with noise fixed by the call's index: both implementations, each
    with its own instance, draw the same tokens from the same q."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, generator=None):
        noise = torch.rand(q.shape, generator=torch.Generator().manual_seed(self.calls), dtype=torch.float64)
        self.calls += 1
        return (q.double() / -torch.log1p(-noise)).argmax(-1)


# --- transcription of SDTT's code (mask index = V, the network has V + 1 outputs, SDTT time: 1 = noise) ------------


def _sdtt_subs(logits, xt, mask_index):
    """MultiRoundSDTT._subs_parameterization."""
    logits = logits.clone()
    logits[:, :, mask_index] += NEG_INF
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = xt != mask_index
    logits[unmasked] = NEG_INF
    logits[unmasked, xt[unmasked]] = 0
    return logits


def _sdtt_teacher_logprobs_on_mask(forward_teacher, xt, ts, dt, mask_index, eps, draw):
    """MultiRoundSDTT._teacher_logprobs_on_mask with the ancestral branch of _compute_ddpm_update and
    _ddpm_sample_update; ``ts`` (m, B) the teacher's times (given: see test docstring)."""
    teacher_predictions = torch.zeros((*xt.shape, mask_index + 1))
    unmasked_tokens = torch.zeros(xt.shape)
    curr_x = xt
    for idx in range(len(ts)):
        t = ts[idx].float()
        move_chance_t = 1 - torch.exp(torch.log1p(-(1 - eps) * t))[:, None, None]  # 1 - exp(-sigma(t)), log-linear
        move_chance_s = 1 - torch.exp(torch.log1p(-(1 - eps) * (t - dt)))[:, None, None]
        log_p_x0 = forward_teacher(curr_x, t)
        q_xs = log_p_x0.exp() * (move_chance_t - move_chance_s)
        q_xs[:, :, mask_index] = move_chance_s[:, :, 0]
        update = draw(q_xs)
        copy_flag = (curr_x != mask_index).to(curr_x.dtype)
        new_batch = copy_flag * curr_x + (1 - copy_flag) * update
        updated = curr_x != new_batch
        teacher_predictions[updated] = log_p_x0[updated]
        unmasked_tokens += updated
        curr_x = new_batch
    last = ((curr_x == mask_index) * torch.logical_not(unmasked_tokens))[..., None].to(bool)
    return torch.where(last, log_p_x0, teacher_predictions)


def test_teacher_targets_and_divergences_match_sdtt():
    teacher = _mdlm(1)
    path = teacher.path
    torch.manual_seed(3)
    B, m, dt = 16, 2, 0.1
    x1 = torch.randint(0, V, (B, L))
    t = torch.rand(B) * 0.75 + 0.05  # flowzoo time; SDTT's tau = 1 - t
    xt = path.sample(x1, t, V)
    assert (xt == V).any() and (xt != V).any()

    def ours_predict(x, s):
        return teacher.head.log_probs(teacher.logits(x, s.float())).float()

    def sdtt_forward(x, tau):  # the same network, with the [MASK] output column SDTT's model has
        logits = teacher.logits(x, (1 - tau).float())
        return _sdtt_subs(torch.cat([logits, torch.zeros(*logits.shape[:2], 1)], -1), x, V)

    times = t[None] + dt * torch.arange(m + 1)[:, None]  # flowzoo: t, t + dt, t + 2 dt
    ours = teacher_targets(ours_predict, xt, times, path, V, draw=_SeededDraw())
    taus = 1 - times[:-1]  # SDTT's teacher times t, t - dt (the paper's spacing; see docs/baselines.md)
    ref = _sdtt_teacher_logprobs_on_mask(sdtt_forward, xt, taus, dt, V, path.eps, _SeededDraw())
    masked = xt == V
    diff = (ours[masked] - ref[masked][:, :V]).abs().max().item()
    assert diff < 1e-5, diff
    # the two steps made a difference: some targets come from the second step's (more unmasked) input
    first = ours_predict(xt, times[0])
    assert (ours[masked] - first[masked]).abs().max() > 1e-3

    student = torch.log_softmax(torch.randn(int(masked.sum()), V), -1)
    target = ref[masked]
    padded = torch.cat([student, torch.full((student.shape[0], 1), NEG_INF)], -1)
    bwd = F.kl_div(target, padded, log_target=True, reduction="batchmean")  # SDTT's _bwd_kl(preds, target)
    fwd = F.kl_div(padded, target, log_target=True, reduction="batchmean")  # _fwd_kl
    assert abs(divergence(student, ours[masked], "kl-bwd").mean().item() - bwd.item()) < 1e-5
    assert abs(divergence(student, ours[masked], "kl-fwd").mean().item() - fwd.item()) < 1e-5
    tv = 0.5 * (student.exp() - ours[masked].exp()).abs().sum(-1).mean()
    assert torch.allclose(divergence(student, ours[masked], "tvd").mean(), tv)


def test_teacher_steps_unmask_with_the_ancestral_probabilities():
    """With a context-free teacher, the share unmasked after m steps of dt is (a(t + m dt) - a(t)) / (1 - a(t))."""
    path = MaskedPath()
    B = 4000
    xt = torch.full((B, L), V)
    t = torch.full((B,), 0.3)
    times = t[None] + 0.1 * torch.arange(3)[:, None]
    seen = {}

    def predict(x, s):
        seen["x"] = x
        return torch.log_softmax(torch.zeros(*x.shape, V), -1)

    teacher_targets(predict, xt, times, path, V, generator=torch.Generator().manual_seed(0))
    a0, a1 = path.alpha(torch.tensor(0.3)), path.alpha(torch.tensor(0.4))
    share = (seen["x"] != V).float().mean().item()  # after the first step
    assert abs(share - ((a1 - a0) / (1 - a0)).item()) < 0.01


def test_student_starts_as_the_teacher_and_a_context_free_teacher_gives_zero_loss(tmp_path):
    teacher = _mdlm(2)
    save_pretrained(teacher, tmp_path / "teacher")
    student = FlowLM(backbone=TINY, path="masked", objective={"name": "sdtt", "init_args": {"teacher": str(tmp_path / "teacher")}},
                     sampler="ancestral", vocab_size=V)
    x1 = torch.randint(0, V, (8, L))
    assert student.objective.teacher_model is None  # nothing is loaded when the model is built
    student.prepare_objective()  # what training_step does before the loss: load, check, hand over, copy once
    out = student.objective(student, x1)
    assert torch.isfinite(out["loss"]) and out["loss"] >= 0 and out["student_steps"] == 512
    x, t = torch.randint(0, V + 1, (2, L)), torch.full((2,), 0.5)
    assert torch.allclose(student.logits(x, t), teacher.logits(x, t), atol=1e-6)
    const = torch.randn(V)
    for m in (student, student.objective._teacher):
        m.logits = lambda x, t, s=None: const.expand(*x.shape, V)
    assert student.objective(student, x1)["loss"].abs().item() < 1e-6
    # saved without the teacher, reloaded without overwriting
    del student.logits
    save_pretrained(student, tmp_path / "student")
    again = from_pretrained(tmp_path / "student")
    assert bool(again.objective.teacher_copied)
    assert not any("_teacher" in k for k in again.state_dict())


def test_sdtt_refusals():
    with pytest.raises(IncompatibleComponentsError, match="masked"):
        FlowLM(backbone=TINY, path="uniform", objective="sdtt", sampler="uniform_ancestral", vocab_size=V)
    with pytest.raises(ValueError, match="divergence"):
        FlowLM(backbone=TINY, path="masked", objective={"name": "sdtt", "init_args": {"divergence": "mse"}}, sampler="ancestral", vocab_size=V)
    student = FlowLM(backbone=TINY, path="masked", objective="sdtt", sampler="ancestral", vocab_size=V)
    with pytest.raises(CheckpointError, match="teacher"):
        student.objective(student, torch.randint(0, V, (2, L)))


def test_sdtt_rounds_from_the_command_line(tmp_path):
    from flowzoo.cli import main

    teacher = _mdlm(4)
    save_pretrained(teacher, tmp_path / "teacher")
    code = main([
        "fit", "--model.path=masked", "--model.objective=sdtt", f"--model.objective.teacher={tmp_path / 'teacher'}",
        "--model.objective.round_steps=2", "--model.objective.rounds=3", "--model.objective.base_steps=16",
        "--model.sampler=ancestral", "--model.sampler.steps=4",
        *TINY_NETWORK,
        f"--data.num_states={V}", "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16",
        "--trainer.max_steps=5", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ])
    assert code == 0
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert int(state["objective.round"]) == 2  # steps 0..4 with 2 steps a round
    assert "val/ppl_bound" in next((tmp_path / "run").rglob("metrics.csv")).read_text()  # validation: the student's NELBO


def test_in_evaluation_the_student_reports_its_mdlm_nelbo_without_a_teacher():
    from flowzoo.objectives.mdlm import MDLM

    student = FlowLM(backbone=TINY, path="masked", objective={"name": "sdtt", "init_args": {"teacher": "/nonexistent/teacher"}},
                     sampler="ancestral", vocab_size=V).eval()
    student.prepare_objective()  # evaluation: no teacher is loaded (its path does not exist)
    assert student.objective.teacher_model is None
    x1 = torch.randint(0, V, (8, L))
    torch.manual_seed(5)
    out = student.objective(student, x1)
    torch.manual_seed(5)
    plain = MDLM(fused=False)(student, x1)
    assert torch.allclose(out["loss"], plain["loss"]) and torch.allclose(out["ppl_bound"], plain["ppl_bound"])


def test_a_new_round_hands_the_student_to_the_teacher(monkeypatch):
    teacher = _mdlm(6)
    student = FlowLM(backbone=TINY, path="masked", objective={"name": "sdtt", "init_args": {"round_steps": 3}}, sampler="ancestral", vocab_size=V)
    student.attach_teacher(teacher)
    with torch.no_grad():
        for p in student.backbone.parameters():
            p.add_(0.01)  # training moved the student away from its teacher
    x, t = torch.randint(0, V + 1, (2, L)), torch.full((2,), 0.5)
    obj = student.objective
    assert obj.advance(student) is teacher and int(obj.round) == 0  # global step 0: round 0, the checkpoint teaches
    assert not torch.allclose(student.logits(x, t), teacher.logits(x, t))
    monkeypatch.setattr(FlowLM, "global_step", property(lambda self: 7))  # step 7 with 3 steps a round: round 2
    obj.advance(student)
    assert int(obj.round) == 2 and obj.student_steps() == 1024 // 8
    assert torch.allclose(student.logits(x, t), teacher.logits(x, t), atol=1e-6)  # the student became the teacher
