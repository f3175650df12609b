"""The ``policy_gradient`` objective: KL-regularised REINFORCE with a baseline for AR (exact log-likelihood) and
MDLM (the NELBO as its surrogate), against a frozen base model resolved by the model."""

import pytest
import torch

from flowzoo import registry
from flowzoo.checkpoints import save_pretrained
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM

V, L = 8, 6
COUNT = {"name": "token_count", "init_args": {"tokens": [3]}}
KINDS = {
    "ar": dict(backbone={"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16, "causal": True}},
               path="autoregressive", objective="ar", sampler="ar"),
    "mdlm": dict(backbone={"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}},
                 path="masked", objective="mdlm", sampler={"name": "ancestral", "init_args": {"steps": 6}}),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    out = {}
    for kind, parts in KINDS.items():
        torch.manual_seed(0)
        model = FlowLM(vocab_size=V, **parts)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
        out[kind] = save_pretrained(model.eval(), tmp_path_factory.mktemp(kind) / "model")
    return out


def policy(bases, kind, **args):
    parts = dict(KINDS[kind])
    objective = {"name": "policy_gradient", "init_args": {"teacher": str(bases[kind]), "reward": COUNT, "num_generated": 32, **args}}
    model = FlowLM(vocab_size=V, **{**parts, "objective": objective})
    model.prepare_objective()  # the model loads the frozen base; the policy starts as it
    return model


def mean_reward(model, seed=0):
    return (model.generate(256, L, seed=seed).tokens == 3).float().sum(1).mean().item()


@pytest.mark.parametrize("kind", ["ar", "mdlm"])
def test_policy_gradient_raises_the_reward_and_starts_at_zero_kl(bases, kind):
    torch.manual_seed(0)
    model = policy(bases, kind, tilt=2.0)
    data = torch.zeros(8, L, dtype=torch.long)  # only its length (and batch size) matter: the samples are the model's
    first = model.objective(model, data)
    assert first["kl"].abs().item() < 1e-4  # the policy is the base: log p_theta - log p_base = 0 (common noise for MDLM)
    assert first["loss"].requires_grad and torch.isfinite(first["loss"])
    before = mean_reward(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3 if kind == "ar" else 1e-3)  # MDLM's surrogate is noisier
    for _ in range(15):
        out = model.objective(model, data)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert mean_reward(model) > before + 0.2
    assert out["kl"].item() > 0  # it moved away from the base


def test_ar_log_likelihood_is_the_exact_sequence_log_probability(bases):
    model = policy(bases, "ar")
    x = torch.randint(0, V, (5, L))
    exact = -registry.build("objective", "ar").token_nll(model, x).sum(1)
    assert torch.allclose(model.objective.log_likelihood(model, x, []), exact, atol=1e-5)


def test_mdlm_surrogate_is_minus_the_nelbo_of_the_mdlm_objective(bases):
    """Averaged over many draws of (t, x_t), the surrogate log-likelihood is -NELBO(x), the mdlm objective's loss
    (per token) times L, on the same rows."""
    model = policy(bases, "mdlm", elbo_samples=64)
    x = torch.randint(0, V, (4, L))
    torch.manual_seed(1)
    surrogate = model.objective.log_likelihood(model, x, model.objective.draw_noise(model, x))  # (4,)
    torch.manual_seed(1)
    nelbo = torch.stack([registry.build("objective", "mdlm")(model, x)["loss"] * L for _ in range(64)]).mean()
    assert torch.isfinite(surrogate).all() and (surrogate < 0).all()
    assert surrogate.mean().item() == pytest.approx(-nelbo.item(), rel=0.15)


def test_baselines_and_refusals(bases):
    model = policy(bases, "ar")
    R = torch.tensor([1.0, 2.0, 3.0])
    assert model.objective.advantages(R).tolist() == [-1.5, 0.0, 1.5]  # R_i - mean_{j != i} R_j
    assert policy(bases, "ar", baseline="mean").objective.advantages(R).tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown baseline 'median'; choices: leave_one_out, mean"):
        policy(bases, "ar", baseline="median")
    with pytest.raises(ValueError, match="leave_one_out baseline needs num_generated >= 2"):
        policy(bases, "ar", num_generated=1)
    with pytest.raises(IncompatibleComponentsError, match="policy_gradient needs a sequence log-likelihood"):
        FlowLM(vocab_size=V, objective={"name": "policy_gradient", "init_args": {"reward": COUNT}})
    # values only: a non-differentiable reward is accepted (REINFORCE never differentiates r)
    regex = policy(bases, "ar", reward={"name": "regex", "init_args": {"pattern": "3"}})
    regex.objective.reward.bind(V, decode=lambda ids: [" ".join(map(str, row)) for row in ids.tolist()])
    out = regex.objective(regex, torch.zeros(4, L, dtype=torch.long))
    assert torch.isfinite(out["loss"]) and out["reward"] >= 0
