"""Distribution matching (dmd): the critic-teacher gap, noise bands, decodes, the critic and the GAN discriminator."""

import pytest
import torch

from flowzoo import registry
from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.module import FlowLM
from helpers import B, L, TINY, V, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _dmd_student(teacher, **init_args):
    student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "dmd", "init_args": init_args})
    student.attach_teacher(teacher)
    return student


def test_dmd_pushes_the_one_step_samples_only_by_the_critic_teacher_gap():
    teacher = small_model()
    student = _dmd_student(teacher, init_from_teacher=False)
    with torch.no_grad():  # a student that is not its teacher: its one-step samples are not the teacher's
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student.eval()  # no critic step: the critic is still the teacher
    out = student.objective.distribution_loss(student, B, L, torch.device("cpu"))
    grads = torch.autograd.grad(out["dmd"], [p for p in student.parameters() if p.requires_grad], allow_unused=True)
    assert float(out["dmd_gap"]) == 0.0 and all(g is None or not g.any() for g in grads)
    critic = student.critic()
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = student.objective.distribution_loss(student, B, L, torch.device("cpu"))
    grads = torch.autograd.grad(out["dmd"], [p for p in student.parameters() if p.requires_grad], allow_unused=True)
    assert float(out["dmd_gap"]) > 0 and any(g is not None and g.any() for g in grads)


def test_dmd_noise_bands_split_the_samples_and_weight_their_losses():
    """Two bands: sample i is noised within band i mod 2, and a band of weight 0 takes no gradient."""
    teacher = small_model()
    student = _dmd_student(teacher, noise_range=[[0.0, 0.1], [0.9, 1.0]], band_weights=[0.0, 2.0])
    u = student.path.network_time(student.objective.noise_times(student, 64, torch.device("cpu")))
    assert (u[0::2] <= 0.1 + 1e-5).all() and (u[1::2] >= 0.9 - 1e-5).all()
    critic = student.critic()
    with torch.no_grad():  # a critic that differs from the teacher: a nonzero push
        for p in critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student.eval()
    captured = {}
    original = student.objective.generate

    def keep(*args, **kwargs):
        logits, delta, sample = original(*args, **kwargs)
        delta.retain_grad()
        captured["delta"] = delta
        return logits, delta, sample

    student.objective.generate = keep
    student.objective.distribution_loss(student, B, L, torch.device("cpu"))["dmd"].backward()
    g = captured["delta"].grad  # (B, L, V)
    assert not g[0::2].any() and g[1::2].abs().sum() > 0
    with pytest.raises(ValueError, match="band_weights"):
        registry.build("objective", {"name": "dmd", "init_args": {"noise_range": [[0.0, 0.5], [0.5, 1.0]], "band_weights": [1.0]}})
    with pytest.raises(ValueError, match="noise_range"):
        registry.build("objective", {"name": "dmd", "init_args": {"noise_range": [[0.0, 0.5], [0.9, 0.1]]}})


def test_dmd_compares_argmax_decodes_straight_through_or_the_soft_map():
    teacher = small_model()
    seen = {}
    for form in ("argmax", "soft"):
        student = _dmd_student(teacher, samples=form)
        student.train_critic = lambda sample, data=None, form=form: {"critic": seen.setdefault(form, sample).sum() * 0}
        student.train()
        critic = student.critic()
        with torch.no_grad():  # a critic that differs from the teacher: a nonzero push
            for p in critic.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out = student.objective.distribution_loss(student, B, L, torch.device("cpu"))
        out["dmd"].backward()
        assert any(p.grad is not None and p.grad.any() for p in student.parameters())  # the gradient reaches delta
    hard = seen["argmax"]
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(B, L))
    assert not set(seen["soft"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="samples"):
        registry.build("objective", {"name": "dmd", "init_args": {"samples": "gumbel"}})
    with pytest.raises(ValueError, match="gradient_through"):
        registry.build("objective", {"name": "dmd", "init_args": {"gradient_through": "both"}})


def test_dmd_step_on_the_logits_is_the_logit_gradient():
    """gradient_through="logits": d dmd / d logits is the step g itself; "probs" applies g to delta, so the logits
    get the softmax Jacobian of it, p (g - <p, g>). Same noise for both (same seed)."""
    teacher = small_model()
    student = _dmd_student(teacher)
    critic = student.critic()
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    captured = {}
    original = student.logits

    def keep(x, t, s=None):
        out = original(x, t, s)
        if s is not None and bool((s == 0).all()) and bool((t == 1).all()):
            out.retain_grad()
            captured["logits"] = out
        return out

    student.logits = keep
    student.eval()
    grads = {}
    for through in ("logits", "probs"):
        student.objective.gradient_through = through
        torch.manual_seed(1)
        student.objective.distribution_loss(student, B, L, torch.device("cpu"))["dmd"].backward()
        grads[through] = captured["logits"].grad  # (B, L, V)
    g = grads["logits"]
    assert g.abs().max() > 0 and g.sum(-1).abs().max() < 1e-4 * g.abs().max()  # a step that sums to 0 over V
    p = torch.softmax(captured["logits"].detach(), -1)
    expected = p * (g - (p * g).sum(-1, keepdim=True))
    assert torch.allclose(grads["probs"], expected, rtol=1e-3, atol=1e-3 * expected.abs().max())
    assert not torch.allclose(grads["probs"], g, atol=1e-3 * g.abs().max())


def test_dmd_critic_learns_the_one_step_samples_and_stays_out_of_the_weights(tmp_path):
    teacher = small_model()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _dmd_student(teacher, critic_steps=4, critic_lr=3e-3)
    student.train()
    torch.manual_seed(0)
    x1 = torch.randint(0, V, (B, L))
    first = student.objective(student, x1)
    first["loss"].backward()
    assert torch.isfinite(first["loss"]) and {"dmd", "dmd_gap", "critic", "diag", "map"} <= set(first)
    critic = student.critic()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher is frozen
    assert not all(torch.equal(v, critic.state_dict()[k]) for k, v in before.items())  # the critic moved
    losses = [float(student.objective(student, x1)["critic"]) for _ in range(6)]
    assert losses[-1] < float(first["critic"])  # flow matching on the student's (fixed) one-step law
    assert not any("critic" in k for k in student.state_dict())
    save_pretrained(student, tmp_path / "student")
    again = from_pretrained(tmp_path / "student")
    assert again.objective.registry_name == "dmd" and again._critic is None


def test_dmd_critic_travels_in_the_training_checkpoint_and_one_of_another_shape_is_refused():
    from flowzoo.checkpoints.pretrained import CRITIC_KEY, check_finite, training_tensors
    from flowzoo.errors import CheckpointError

    teacher = small_model()
    student = _dmd_student(teacher, critic_lr=3e-3)
    student.train()
    torch.manual_seed(0)
    student.objective(student, torch.randint(0, V, (B, L)))["loss"].backward()
    checkpoint = {}
    student.on_save_checkpoint(checkpoint)
    saved = checkpoint[CRITIC_KEY]
    resumed = _dmd_student(teacher)
    resumed.on_load_checkpoint(checkpoint)
    again = {}
    resumed.on_save_checkpoint(again)  # saved again before its critic is built (no step since the resume): the same critic
    assert all(torch.equal(v, saved["network"][k]) for k, v in again[CRITIC_KEY]["network"].items())
    critic = resumed.critic()
    assert all(torch.equal(v, saved["network"][k]) for k, v in critic.state_dict().items())
    assert not all(torch.equal(v, teacher.state_dict()[k]) for k, v in critic.state_dict().items())  # trained, not the teacher
    adam = resumed._critic.optimizer.state_dict()["state"]
    assert adam and all(torch.equal(adam[i]["exp_avg"], saved["optimizer"]["state"][i]["exp_avg"]) for i in adam)
    with_gan = _dmd_student(teacher, gan_weight=1.0)  # a discriminator the saved critic does not have
    with_gan.on_load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="does not fit.*missing \\['discriminator.bias', 'discriminator.weight'\\]"):
        with_gan.critic()
    first = next(iter(saved["network"]))
    saved["network"][first] = torch.full_like(saved["network"][first], float("nan"))
    with pytest.raises(CheckpointError, match=f"dmd critic {first}"):
        check_finite(training_tensors(checkpoint), "last.ckpt")


def test_dmd_critic_steps_after_the_first_train_on_fresh_one_step_samples():
    teacher = small_model()
    student = _dmd_student(teacher, critic_steps=3)
    student.train()
    drawn, original = [], student.objective.generate

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append((torch.is_grad_enabled(), out[2]))
        return out

    student.objective.generate = counting
    torch.manual_seed(0)
    student.objective.distribution_loss(student, B, L, torch.device("cpu"))
    assert [grad for grad, _ in drawn] == [True, False, False]  # the map's samples, then two fresh ones for the critic
    assert not torch.equal(drawn[0][1], drawn[1][1]) and not torch.equal(drawn[1][1], drawn[2][1])


def test_dmd_gan_discriminator_tells_data_from_one_step_samples():
    """With gan_weight the critic's steps also train a per-position discriminator head: after a few, it scores
    data (here: one fixed sequence the samples are not) above the student's one-step samples."""
    teacher = small_model()
    student = _dmd_student(teacher, gan_weight=1.0, critic_lr=3e-3, noise_range=(0.8, 0.98))
    student.train()
    torch.manual_seed(0)
    real = (torch.arange(L) % (V - 1) + 1).expand(B, L)
    critic = student.critic()
    sample = student.objective.generate(student, B, L, torch.device("cpu"))[2]
    assert not (sample.argmax(-1) == real).all()
    losses = [float(student.train_critic(sample, real)["disc"]) for _ in range(40)]
    assert losses[-1] < losses[0]
    with torch.no_grad():
        data = torch.nn.functional.one_hot(real, V).float()
        margin = student.objective.discriminate(student, critic, data).mean() - student.objective.discriminate(student, critic, sample).mean()
    assert margin > 0
    assert not any("discriminator" in k or "critic" in k for k in student.state_dict())


def test_dmd_gan_gradient_reaches_the_map_and_not_the_critic():
    teacher = small_model()
    student = _dmd_student(teacher, gan_weight=1.0, dmd_weight=0.0)
    student.eval()  # no critic steps
    x1 = torch.randint(0, V, (B, L))
    out = student.objective.distribution_loss(student, B, L, torch.device("cpu"), data=x1)
    out["gan"].backward()
    critic = student.critic()
    assert any(p.grad is not None and p.grad.any() for p in student.parameters())
    assert all(p.grad is None for p in critic.parameters()) and all(p.requires_grad for p in critic.parameters())
    with pytest.raises(ValueError, match="real data"):
        student.objective.distribution_loss(student, B, L, torch.device("cpu"))
    with pytest.raises(ValueError, match="gan_weight"):
        registry.build("objective", {"name": "dmd", "init_args": {"gan_weight": -1.0}})
    student.train()
    out = student.objective(student, x1)
    assert {"gan", "disc", "dmd"} <= set(out) and torch.isfinite(out["loss"])
    other = {"name": "flow_map", "init_args": {"steps": 2}}  # a sampler other than the model's: checked again
    assert student.generate(2, L, sampler=other, seed=0).tokens.shape == (2, L)


def _self_conditioned_teacher():
    conditioned = {**TINY, "init_args": {**TINY["init_args"], "self_condition": True}}
    teacher = FlowLM(backbone=conditioned, vocab_size=V)
    with torch.no_grad():  # random weights: W_sc and the adaLN are zero-initialised, which would hide the second pass
        for p in teacher.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    return teacher, conditioned


def test_dmd_score_self_condition_reads_both_denoisers_twice_and_trains_the_critic_so():
    """score_self_condition: D^real and D^fake are D_t(x | sg[D_t(x | 0)]), alike at the start (no push), and the
    critic's loss reaches its self-conditioning weights W_sc; without it, one pass each and W_sc takes no gradient.
    A teacher without self-conditioning is refused."""
    torch.manual_seed(0)
    teacher, conditioned = _self_conditioned_teacher()
    xt, t = torch.randn(B, L, V), torch.rand(B)
    with torch.no_grad():
        once = teacher.head.denoise(teacher.logits(xt, t, t))
        twice = teacher.head.denoise(teacher.logits(xt, t, t, self_cond=once))
    assert not torch.allclose(once, twice, atol=1e-3)
    sample = torch.nn.functional.one_hot(torch.randint(0, V, (B, L)), V).float()
    for flag, expected in ((False, once), (True, twice)):
        student = FlowLM(backbone=conditioned, vocab_size=V, objective={"name": "dmd", "init_args": {"score_self_condition": flag}})
        student.attach_teacher(teacher)
        objective = student.objective
        with torch.no_grad():
            torch.testing.assert_close(objective.score_read(teacher, xt, t), expected)
            torch.testing.assert_close(objective.score_read(student.critic(), xt, t), expected)  # the critic starts as the teacher
        student.eval()  # no critic step: the two reads agree
        assert float(objective.distribution_loss(student, B, L, torch.device("cpu"))["dmd_gap"]) == 0.0
        critic = student.critic()
        critic.zero_grad()
        objective.critic_loss(student, critic, sample)["total"].backward()
        grad = critic.backbone.self_embed.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == flag
    plain = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "dmd", "init_args": {"score_self_condition": True}})
    plain.attach_teacher(small_model())
    with pytest.raises(ValueError, match="trained without self-conditioning"):
        plain.objective.distribution_loss(plain, B, L, torch.device("cpu"))


def test_dmd_generator_steps_push_the_last_jump_of_the_k_step_map_on_its_own_samples(monkeypatch):
    """generator_steps=[1, 4]: the first half of the rows are the 1-step map's samples (delta_{0,1}(eps), as
    before), the second half the 4-step map's: their x^ is what the flow-map sampler decodes from the same noise,
    and the gradient reaches the map through the last jump only."""
    teacher = small_model()
    student = _dmd_student(teacher, generator_steps=[1, 4])
    student.eval()
    assert student.objective.generator_steps_of(5) == [1, 1, 1, 4, 4]
    eps = student.path.sample_prior(B, L, V)  # (B, L, V): the same noise for every draw below
    monkeypatch.setattr(student.path, "sample_prior", lambda *args, **kwargs: eps.clone())
    logits, delta, sample = student.objective.generate(student, B, L, torch.device("cpu"))
    half = B // 2
    one = torch.zeros(half)
    torch.testing.assert_close(logits[:half], student.logits(eps[:half], one + 1, one).float())
    four = student.generate(B, L, sampler={"name": "flow_map", "init_args": {"steps": 4, "fused": False}}, seed=0)
    assert torch.equal(sample[half:].argmax(-1), four.tokens[half:])
    torch.testing.assert_close(delta[half:], four.prediction[half:].float(), atol=1e-5, rtol=1e-4)
    one_step = student.generate(B, L, sampler={"name": "flow_map", "init_args": {"steps": 1, "fused": False}}, seed=0)
    assert not torch.equal(four.tokens[half:], one_step.tokens[half:])
    captured = []
    original = student.logits

    def recording(x, t, s=None, self_cond=None):
        captured.append(torch.is_grad_enabled())
        return original(x, t, s, self_cond)

    monkeypatch.setattr(student, "logits", recording)
    student.objective.generate(student, B, L, torch.device("cpu"))
    assert captured == [False, False, False, True]  # three jumps of the 4-step rows without gradient, then the last one
    with pytest.raises(ValueError, match="generator_steps"):
        registry.build("objective", {"name": "dmd", "init_args": {"generator_steps": [1, 0]}})
    assert registry.build("objective", {"name": "dmd", "init_args": {"generator_steps": 2}}).generator_steps == [2]


def test_dmd_generator_steps_list_survives_the_checkpoint(tmp_path):
    """A list of step counts is a valid config value: the model saved with it loads back with it."""
    student = _dmd_student(small_model(), generator_steps=[1, 4])
    save_pretrained(student, tmp_path / "student")
    assert from_pretrained(tmp_path / "student").objective.generator_steps == [1, 4]


def test_dmd_step_regression_fits_the_one_step_map_to_the_k_step_samples_of_the_same_noise(monkeypatch):
    """generator_steps=[1, 4] with step_regression_weight: the extra loss is the CE of delta_{0,1} read at the
    4-step rows' noise against what the 4-step sampler draws from that same noise, and it trains the map."""
    teacher = small_model()
    student = _dmd_student(teacher, generator_steps=[1, 4], step_regression_weight=0.5)
    with torch.no_grad():  # a student that is not its teacher, so the 1-step and the 4-step decodes differ
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student.eval()
    eps = student.path.sample_prior(B, L, V)  # (B, L, V): the same noise for every draw below
    monkeypatch.setattr(student.path, "sample_prior", lambda *args, **kwargs: eps.clone())
    out = student.objective.distribution_loss(student, B, L, torch.device("cpu"))
    half = B // 2
    four = student.generate(B, L, sampler={"name": "flow_map", "init_args": {"steps": 4, "fused": False}}, seed=0)
    one = torch.ones(B - half)
    expected = torch.nn.functional.cross_entropy(
        student.logits(eps[half:], one, 0 * one).float().flatten(0, 1), four.tokens[half:].flatten()
    )
    torch.testing.assert_close(out["step_regression"], expected)
    grads = torch.autograd.grad(out["step_regression"], [p for p in student.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.any() for g in grads)
    batch = torch.randint(V, (B, L))
    torch.manual_seed(0)
    with_term = student.objective(student, batch)
    student.objective.step_regression_weight = 0.0
    torch.manual_seed(0)
    without = student.objective(student, batch)
    assert float(with_term["step_regression"]) > 0 and "step_regression" not in without
    torch.testing.assert_close(with_term["loss"] - without["loss"], 0.5 * with_term["step_regression"])
    with pytest.raises(ValueError, match="step_regression_weight"):
        registry.build("objective", {"name": "dmd", "init_args": {"step_regression_weight": 1.0}})  # no k-step block
    with pytest.raises(ValueError, match="step_regression_weight"):
        registry.build("objective", {"name": "dmd", "init_args": {"generator_steps": [1, 4], "step_regression_weight": -1.0}})
