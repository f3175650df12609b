"""Flow maps: the map from the mean denoiser, the lsd / psd / distill objectives, the flow_map sampler, tau time."""

import shutil

import pytest
import torch

from flowzoo import registry
from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.cli import main
from flowzoo.errors import CheckpointError, IncompatibleComponentsError
from flowzoo.exact import ExactFlowLM
from flowzoo.module import FlowLM
from flowzoo.objectives._flowmap import lagrangian_residual, sample_pairs
from flowzoo.objectives.psd import semigroup_loss, semigroup_target
from flowzoo.paths import LinearPath
from flowzoo.paths.base import ProbabilityPath
from flowzoo.samplers.flow_map import FlowMapSampler

map_weights, semigroup_weight = ProbabilityPath.map_weights, ProbabilityPath.semigroup_weight

V, L, B = 11, 6, 4
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}
CORNERS = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.999999, 1.0), (0.3, 0.3), (0.2, 0.7)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second thread only waits for the other core (the CI box has two, shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_model(**parts) -> FlowLM:
    model = FlowLM(backbone=TINY, vocab_size=V, **parts)
    with torch.no_grad():  # move off the zero initialisation so s and t both matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _corner_times():
    s = torch.tensor([c[0] for c in CORNERS])
    t = torch.tensor([c[1] for c in CORNERS])
    return s, t


# --- the map -------------------------------------------------------------------------------
def test_map_weights_are_finite_convex_and_identity_on_the_diagonal():
    s, t = _corner_times()
    s.requires_grad_(True)
    t.requires_grad_(True)
    a, b = map_weights(s, t)
    assert torch.allclose(a + b, torch.ones_like(a))
    assert ((b >= 0) & (b <= 1)).all()
    assert torch.equal(b[s == t], torch.zeros_like(b[s == t]))  # X_{t,t} = x, including s = t = 1
    assert b[1] == 1 and b[3] == 1  # X_{s,1} = delta_{s,1}
    (a.sum() + b.sum()).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


def test_linear_path_flow_map_is_identity_at_one():
    x, delta = torch.randn(1, L, V), torch.softmax(torch.randn(1, L, V), -1)
    one = torch.ones(1)
    assert torch.allclose(LinearPath().flow_map(x, delta, one, one), x)
    assert torch.allclose(LinearPath().flow_map(x, delta, torch.zeros(1), one), delta)


def test_semigroup_weight_matches_the_composition_of_two_maps():
    """With delta_{s,u} and delta_{u,t} arbitrary, X_{u,t}(X_{s,u}) is the map with the gamma-mixed delta."""
    s, u, t = torch.tensor([0.1, 0.0, 0.3]), torch.tensor([0.4, 0.5, 0.9]), torch.tensor([0.8, 1.0, 0.95])
    path = LinearPath()
    x = torch.randn(3, L, V)
    d1, d2 = torch.softmax(torch.randn(3, L, V), -1), torch.softmax(torch.randn(3, L, V), -1)
    composed = path.flow_map(path.flow_map(x, d1, s, u), d2, u, t)
    g = semigroup_weight(s, u, t)[:, None, None]
    assert torch.allclose(path.flow_map(x, g * d1 + (1 - g) * d2, s, t), composed, atol=1e-5)
    # degenerate corners stay in [0, 1]
    corners = semigroup_weight(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([1.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.isfinite(corners).all() and ((corners >= 0) & (corners <= 1)).all()


def test_pair_sampling_orders_times_and_forces_the_boundary():
    path = LinearPath()
    pairs = sample_pairs(path, 4000, "fmlm", boundary=0.25)
    assert (pairs.s <= pairs.t).all() and (pairs.s >= 0).all() and (pairs.t <= 1).all()
    share = ((pairs.s == 0) & (pairs.t == 1)).float().mean()
    assert 0.2 < share < 0.3
    gaps = (pairs.t - pairs.s)[~((pairs.s == 0) & (pairs.t == 1))]
    assert abs(gaps.mean().item() - 0.5) < 0.05  # d ~ U[0, 1]
    with pytest.raises(ValueError, match="pair sampling"):
        sample_pairs(path, 4, "sorted")


# --- the losses ----------------------------------------------------------------------------
def _at_the_corners(head: str):
    """A small model with the given head and states x_s (one sequence per corner) at the corner pairs (s, t)."""
    model = small_model(head=head)
    s, t = _corner_times()
    x1 = torch.randint(0, V, (len(CORNERS), L))
    return model, model.path.sample(x1, s, V), s, t


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
def test_map_losses_are_finite_with_finite_gradients_at_every_corner(head):
    model, xs, s, t = _at_the_corners(head)
    r = lagrangian_residual(model, xs, s, t)
    u = (s + t) / 2
    target = semigroup_target(model, xs, s, u, t)
    out = semigroup_loss(model, xs, s, t, target, adaptive=True)
    loss = (r**2).sum(-1).mean() + out["map"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
def test_stop_tangent_residual_has_the_value_and_the_semi_gradient(head):
    """tangent_grad=False: the same residual at every corner, finite gradients, and d/dt of the map gets none."""
    model, xs, s, t = _at_the_corners(head)
    full = lagrangian_residual(model, xs, s, t)
    semi = lagrangian_residual(model, xs, s, t, stop_tangent=True)
    torch.testing.assert_close(semi, full, rtol=1e-4, atol=1e-5)
    grads = []
    for r in (full, semi):
        model.zero_grad(set_to_none=True)
        (r**2).sum(-1).mean().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert torch.isfinite(grads[-1]).all()
    assert not torch.allclose(grads[0], grads[1])  # the tangent's gradient is what the semi-gradient drops


@pytest.mark.parametrize("objective", ["lsd", "psd"])
def test_map_loss_trains_the_off_diagonal(objective):
    """With no diagonal share the gradient reaches the (s, t) gap embedder: the map itself is trained."""
    model = small_model(objective={"name": objective, "init_args": {"diagonal_share": 0.0}})
    out = model.objective(model, torch.randint(0, V, (B, L)))
    assert set(out) >= {"loss", "diag", "map"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.backbone.gap_embed.mlp[-1].weight.grad.abs().sum() > 0


def test_diagonal_share_one_is_plain_flow_matching():
    model = small_model(objective={"name": "psd", "init_args": {"diagonal_share": 1.0}})
    out = model.objective(model, torch.randint(0, V, (B, L)))
    assert "map" not in out and torch.equal(out["loss"], out["diag"])


def test_objectives_reject_bad_arguments():
    with pytest.raises(ValueError, match="diagonal_share"):
        registry.build("objective", {"name": "lsd", "init_args": {"diagonal_share": 1.5}})
    with pytest.raises(ValueError, match="midpoint"):
        registry.build("objective", {"name": "psd", "init_args": {"midpoint": "edge"}})
    with pytest.raises(ValueError, match="target"):
        registry.build("objective", {"name": "distill", "init_args": {"target": "velocity"}})
    with pytest.raises(ValueError, match="noise_range"):
        registry.build("objective", {"name": "dmd", "init_args": {"noise_range": [0.9, 0.1]}})
    with pytest.raises(ValueError, match="critic_steps"):
        registry.build("objective", {"name": "dmd", "init_args": {"critic_steps": 0}})
    with pytest.raises(IncompatibleComponentsError, match="categorical head"):
        FlowLM(backbone=TINY, vocab_size=V, head="gaussian", objective="dmd")
    with pytest.raises(ValueError, match="refine_from"):
        registry.build("objective", {"name": "refine", "init_args": {"refine_from": 1.0}})
    with pytest.raises(ValueError, match="refine_steps"):
        registry.build("objective", {"name": "refine", "init_args": {"refine_steps": 0}})
    with pytest.raises(IncompatibleComponentsError, match="categorical head"):
        FlowLM(backbone=TINY, vocab_size=V, head="gaussian", objective="refine")


# --- distillation ----------------------------------------------------------------------------
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
    original = student.objective.one_step

    def keep(*args):
        logits, delta, sample = original(*args)
        delta.retain_grad()
        captured["delta"] = delta
        return logits, delta, sample

    student.objective.one_step = keep
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


def test_dmd_critic_steps_after_the_first_train_on_fresh_one_step_samples():
    teacher = small_model()
    student = _dmd_student(teacher, critic_steps=3)
    student.train()
    drawn, original = [], student.objective.one_step

    def counting(*args):
        out = original(*args)
        drawn.append((torch.is_grad_enabled(), out[2]))
        return out

    student.objective.one_step = counting
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
    sample = student.objective.one_step(student, B, L, torch.device("cpu"))[2]
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


def test_refine_repairs_a_corrupted_decode_and_keeps_a_clean_one():
    """With the exact teacher of three sequences, a decode that is a data sequence with one wrong token is put back
    on the path at refine_from and carried home by the teacher's ODE: repaired to its sequence; a clean one is kept."""
    seqs = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [6, 6, 7, 7, 8, 8]])
    teacher = ExactFlowLM(seqs, V, steps=20)
    objective = registry.build("objective", {"name": "refine", "init_args": {"refine_from": 0.8, "refine_steps": 8}})
    clean = seqs.repeat(10, 1)  # (30, L)
    rows = torch.arange(len(clean))
    where = torch.randint(L, (len(clean),))
    corrupted = clean.clone()
    corrupted[rows, where] = (clean[rows, where] + torch.randint(1, V, (len(clean),))) % V
    x0 = teacher.path.sample_prior(len(clean), L, V)
    assert not torch.equal(corrupted, clean) and torch.equal(objective.refined(teacher, x0, corrupted), clean)
    assert torch.equal(objective.refined(teacher, x0, clean), clean)


def test_refine_loss_trains_the_one_step_map_toward_the_teachers_repair():
    """The refine loss is a CE of delta_{0,1} against the teacher's repair of the student's own decode: its gradient
    reaches the student only, and a step along it raises the repaired tokens' probability at the same noise."""
    teacher = small_model()
    student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "refine", "init_args": {"init_from_teacher": False}})
    student.objective.set_teacher(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cpu, n = torch.device("cpu"), 16
    torch.manual_seed(5)
    out = student.objective.refine_loss(student, n, L, cpu)
    assert 0 < float(out["refine_changed"]) <= 1  # the random teacher rewrites some of the student's tokens
    torch.manual_seed(5)
    x0 = student.path.sample_prior(n, L, V)  # the noise refine_loss drew
    zeros, ones = torch.zeros(n), torch.ones(n)
    with torch.no_grad():
        target = student.objective.refined(teacher, x0, student.logits(x0, ones, zeros).argmax(-1))

    def ce():
        return torch.nn.functional.cross_entropy(student.logits(x0, ones, zeros).flatten(0, 1), target.flatten())

    assert torch.allclose(out["refine"], ce())
    out["refine"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = float(ce())
    with torch.no_grad():
        for p in student.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    assert float(ce()) < before
    student.zero_grad()
    student.train()
    full = student.objective(student, torch.randint(0, V, (B, L)))
    assert {"diag", "map", "refine", "refine_changed"} <= set(full) and torch.isfinite(full["loss"])


# --- the sampler -------------------------------------------------------------------------------
class Counting:
    """Wraps a model and counts network evaluations and the (s, t) they were asked for."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.path, self.head, self.vocab_size, self.device = model.path, model.head, model.vocab_size, model.device

    def logits(self, x, t, s=None):
        self.calls.append((float(s[0]), float(t[0])))
        return self.model.logits(x, t, s)


def test_flow_map_sampler_steps_are_network_evaluations():
    model = Counting(small_model())
    out = FlowMapSampler(steps=1).sample(model, 3, L, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 1 and model.calls == [(0.0, 1.0)] and out.tokens.shape == (3, L)
    assert out.prediction.shape == (3, L, V) and torch.equal(out.prediction.argmax(-1), out.tokens)  # the delta decoded
    model.calls.clear()
    FlowMapSampler(times=[0.0, 0.25, 0.75, 1.0]).sample(model, 3, L)
    assert model.calls == [(0.0, 0.25), (0.25, 0.75), (0.75, 1.0)]


def test_flow_map_sampler_schedule_follows_the_path_time():
    path = LinearPath(time="tau", vocab_size=V)
    times = FlowMapSampler(steps=4).schedule(path)
    assert times[0] == 0 and times[-1] == 1 and (times.diff() > 0).all()
    assert torch.allclose(path.network_time(times), torch.linspace(0, 1, 5), atol=1e-5)  # uniform in tau


def test_flow_map_sampler_churn_and_validation():
    model = small_model()
    a = model.generate(4, L, sampler={"name": "flow_map", "init_args": {"steps": 3}}, seed=0).tokens
    b = model.generate(4, L, sampler={"name": "flow_map", "init_args": {"steps": 3, "gamma": 0.0}}, seed=0).tokens
    c = model.generate(4, L, sampler={"name": "flow_map", "init_args": {"steps": 3, "gamma": 0.5}}, seed=0).tokens
    assert torch.equal(a, b) and c.shape == a.shape
    for bad in ({"times": [0.0, 0.5]}, {"times": [0.0, 0.6, 0.4, 1.0]}, {"steps": 0}, {"gamma": 2.0}):
        with pytest.raises(ValueError):
            FlowMapSampler(**bad)


# --- tau time ------------------------------------------------------------------------------------
def test_tau_time_is_the_argmax_probability_and_default_time_is_unchanged():
    default = LinearPath()
    u = torch.linspace(0, 1, 7)
    assert torch.equal(default.time_from_uniform(u), u) and torch.equal(default.network_time(u), u)
    model = FlowLM(backbone=TINY, vocab_size=V, path={"name": "linear", "init_args": {"time": "tau"}})
    path = model.path
    assert path.vocab_size == V  # bound by the model
    t = path.time_from_uniform(u)
    assert t[0] == 0 and t[-1] == 1 and (t.diff() > 0).all()
    assert torch.allclose(path.network_time(t), u, atol=1e-5)
    # Monte Carlo: P(argmax x_t = clean token), rescaled, at t = 0.5
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(20000, V, generator=g)
    x[:, 0] += 0.5
    mc = V / (V - 1) * ((x.argmax(-1) == 0).float().mean() - 1 / V)
    assert abs(path.network_time(torch.tensor([0.5])).item() - mc.item()) < 0.02
    with pytest.raises(ValueError, match="vocabulary size"):
        LinearPath(time="tau").time_from_uniform(u)


# --- the command line ------------------------------------------------------------------------------
CLI_TINY = [
    "--model.backbone.width=32", "--model.backbone.depth=1", "--model.backbone.heads=2", "--model.backbone.cond_dim=16",
    "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16",
    "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
]


def test_fit_lsd_psd_and_distill_from_the_command_line(tmp_path):
    for objective in ("lsd", "psd"):
        root = tmp_path / objective
        args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", f"--model.objective={objective}", "--model.sampler=flow_map"]
        assert main(args) == 0
    teacher = sorted((tmp_path / "psd").rglob("*.ckpt"))[-1]
    root = tmp_path / "distill"
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=distill",
            f"--model.objective.teacher={teacher}", "--model.sampler=flow_map", "--model.sampler.steps=2"]
    assert main(args) == 0
    student = sorted(root.rglob("*.ckpt"))[-1]
    root = tmp_path / "dmd"  # fine-tune the distilled student with distribution matching
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=dmd", f"--model.objective.teacher={teacher}",
            f"--model.objective.init_from={student}", "--model.objective.critic_steps=2", "--model.sampler=flow_map"]
    assert main(args) == 0
    assert sorted(root.rglob("*.ckpt"))
    root = tmp_path / "refine"  # fine-tune it with the teacher's repairs of its one-step samples
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=refine", f"--model.objective.teacher={teacher}",
            f"--model.objective.init_from={student}", "--model.objective.refine_steps=2", "--model.sampler=flow_map"]
    assert main(args) == 0
    assert sorted(root.rglob("*.ckpt"))
