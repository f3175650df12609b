"""The ``reward`` objective: fine-tunes a flow map towards rho_r (reward term + dmd's KL to the frozen base)."""

import pytest
import torch

from flowzoo.checkpoints import save_pretrained
from flowzoo.module import FlowLM
from flowzoo.rewards import RewardNotDifferentiableError

V, L, B = 11, 6, 8
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}
COUNT = {"name": "token_count", "init_args": {"tokens": [3]}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, vocab_size=V, sampler="flow_map")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return save_pretrained(model, tmp_path_factory.mktemp("base") / "model")


def student(base, **args):
    objective = {"name": "reward", "init_args": {"teacher": str(base), "reward": COUNT, "num_generated": 16, **args}}
    return FlowLM(backbone=TINY, vocab_size=V, objective=objective, sampler="flow_map", lr=3e-3, warmup_steps=1)


def one_step_reward(model, seed=0):
    return (model.generate(256, L, seed=seed).tokens == 3).float().sum(1).mean().item()


@pytest.mark.parametrize("kl_weighting", ["score", "dmd"])
def test_reward_fine_tuning_raises_the_reward_of_the_one_step_map(base, kl_weighting):
    torch.manual_seed(0)
    model = student(base, tilt=2.0, kl_weighting=kl_weighting, intermediate=0.5)
    model.prepare_objective()  # the frozen base is the teacher; the student starts from it
    before = one_step_reward(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.randint(0, V, (B, L))
    for _ in range(15):
        out = model.objective(model, data)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert {"reward", "dmd", "dmd_gap", "critic"} <= set(out)
    assert torch.isfinite(out["loss"])
    assert one_step_reward(model) > before + 0.2


def test_without_the_reward_term_the_fine_tuning_is_dmd_against_the_base(base):
    torch.manual_seed(0)
    model = student(base, tilt=0.0)
    model.prepare_objective()
    out = model.objective(model, torch.randint(0, V, (B, L)))
    assert out["loss"].requires_grad and "reward" in out


def test_bad_reward_objectives_are_refused(base):
    with pytest.raises(RewardNotDifferentiableError, match="the reward objective .* needs the gradient of the reward"):
        student(base, reward={"name": "regex", "init_args": {"pattern": "a"}})
    with pytest.raises(ValueError, match="unknown kl_weighting 'l2'; choices: score, dmd"):
        student(base, kl_weighting="l2")
    with pytest.raises(ValueError, match="tilt, intermediate and distill_weight >= 0"):
        student(base, tilt=-1.0)
    with pytest.raises(ValueError, match="gan_weight > 0 needs kl_weighting='dmd'"):
        student(base, gan_weight=1.0)
