"""Reward steering of the flow_map / euler samplers: eta = 0 changes nothing (bit for bit), the steering gradient
grad_x r(X_{s,1}(x)) against finite differences, a non-differentiable reward refused for gradients only, particles."""

import pytest
import torch

from flowzoo.module import FlowLM
from flowzoo.rewards import RewardNotDifferentiableError
from flowzoo.samplers.euler import EulerSampler
from flowzoo.samplers.flow_map import FlowMapSampler
from flowzoo.samplers.steering import Steering
from flowzoo.state import DenseState

V, L, B = 11, 6, 3
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}
COUNT = {"name": "token_count", "init_args": {"tokens": [2, 5]}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def model() -> FlowLM:
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, vocab_size=V, objective="lsd", sampler="flow_map")
    with torch.no_grad():  # off the zero initialisation, so x, s and t all matter
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("sampler", [FlowMapSampler, EulerSampler])
def test_guidance_zero_equals_the_unsteered_sampler_bit_for_bit(model, sampler):
    plain = model.generate(B, L, sampler=sampler(steps=4, fused=False), seed=7)
    steered = model.generate(B, L, sampler=sampler(steps=4, reward=COUNT, guidance=0.0), seed=7)
    assert torch.equal(plain.tokens, steered.tokens)
    assert torch.equal(plain.prediction, steered.prediction)
    # the lookahead runs at every step but the last jump reuses it (flow_map) / is not steered (euler): 3 extra NFE
    assert (plain.nfe, steered.nfe) == (4, 7)
    # lookaheads (flow_map: every step; euler: every step but the decoded one) and the final score
    assert steered.reward_evaluations == B * (5 if sampler is FlowMapSampler else 4)
    assert torch.equal(steered.reward, torch.isin(steered.tokens, torch.tensor([2, 5])).sum(1).float())


def test_guidance_moves_the_samples_and_raises_the_lookahead_reward(model):
    plain = model.generate(16, L, sampler=FlowMapSampler(steps=4), seed=1)
    steered = model.generate(16, L, sampler=FlowMapSampler(steps=4, reward=COUNT, guidance=2.0, normalize=True), seed=1)
    assert not torch.equal(plain.prediction, steered.prediction)
    soft = lambda out: out.prediction[..., [2, 5]].sum((-1, -2)).mean()  # noqa: E731  r of the final prediction
    assert soft(steered) > soft(plain)


def test_steering_gradient_matches_finite_differences(model, monkeypatch):
    import math

    import flowzoo.backbones.dit as dit

    def embedding64(t, dim, max_period=10_000.0):  # the DiT's sinusoid, kept in t's dtype (it casts to float32)
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=t.dtype) / (dim // 2))
        args = 1000.0 * t[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    monkeypatch.setattr(dit, "timestep_embedding", embedding64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the whole network (its time embedding too) in float64
    try:
        double = FlowLM(backbone=TINY, vocab_size=V, objective="lsd", sampler="flow_map")
    finally:
        torch.set_default_dtype(default)
    double.load_state_dict(model.state_dict())
    double = double.double().eval()
    net = double.backbone  # its logits and the head's softmax without their float32 casts
    net.forward = lambda x, t=None, s=None, cache=None, start=0: net.unembed(net.hidden(x, t, s, cache, start))
    double.head.denoise = lambda logits: torch.softmax(logits, dim=-1)
    steer = Steering(COUNT, guidance=1.0)
    steer.bind(double)
    state = DenseState(double)
    x = torch.randn(2, L, V, dtype=torch.float64)
    s = torch.full((2,), 0.3, dtype=torch.float64)
    look = steer.lookahead(state, x, s, gradient=True)
    one = torch.ones_like(s)

    def r(x):  # r(X_{s,1}(x))
        with torch.no_grad():
            return steer.reward(double.path.flow_map(x, state.predict(x, one, s), s, one)).sum().item()

    eps = 1e-6
    for idx in [(0, 0, 0), (0, 3, 2), (1, 5, 10), (1, 2, 5)]:
        bump = torch.zeros_like(x)
        bump[idx] = eps
        numeric = (r(x + bump) - r(x - bump)) / (2 * eps)
        assert look.grad[idx].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert look.grad.abs().sum() > 0


def test_normalised_gradient_has_unit_rms_norm_per_position():
    steer = Steering(COUNT, guidance=1.0, normalize=True)
    from flowzoo.samplers.steering import Lookahead

    g = torch.randn(2, L, V) * torch.tensor([10.0, 0.1]).reshape(2, 1, 1)
    out = steer.guide(torch.zeros(2, L, V), Lookahead(torch.zeros(2), g, g), torch.ones(2))
    assert torch.allclose(out.flatten(1).norm(dim=1) / L**0.5, torch.ones(2))


def test_schedules(model):
    s, t = torch.tensor([0.0, 0.5]), torch.tensor([0.25, 0.75])
    assert Steering(COUNT, 2.0, "constant").eta(model.path, s, t).tolist() == [2.0, 2.0]
    assert Steering(COUNT, 2.0, "linear").eta(model.path, s, t).tolist() == [2.0, 1.0]
    # tilt: eta sigma^2 (t - s)(1 - s) / max(s, t - s)
    assert Steering(COUNT, 2.0, "tilt").eta(model.path, s, t).tolist() == pytest.approx([2.0, 2.0 * 0.25 * 0.5 / 0.5])


def test_a_non_differentiable_reward_is_refused_for_gradients_only(model):
    regex = {"name": "regex", "init_args": {"pattern": "a"}}
    with pytest.raises(RewardNotDifferentiableError, match=r"gradient steering \(flow_map guidance=1.0\) needs the gradient of the reward, and reward 'regex' is not differentiable"):
        FlowMapSampler(steps=2, reward=regex, guidance=1.0)
    with pytest.raises(RewardNotDifferentiableError, match="not differentiable"):
        EulerSampler(steps=2, reward=regex, guidance=0.5)
    sampler = FlowMapSampler(steps=2, reward=regex, particles=4, tilt=5.0)  # values only: accepted
    sampler.steering.reward.bind(V, decode=lambda ids: ["".join("a" if i < 5 else "b" for i in row) for row in ids.tolist()])
    out = model.generate(B, L, sampler=sampler, seed=0)
    assert out.tokens.shape == (B, L)
    assert torch.equal(out.reward, (out.tokens < 5).sum(1).float())


def test_particles_resample_towards_the_reward(model):
    n, K = 32, 8
    plain = model.generate(n, L, sampler=FlowMapSampler(steps=2), seed=3)
    zeros = {"name": "token_count", "init_args": {"tokens": [0]}}  # the tiny random model's tokens are mostly 0 and 1
    out = model.generate(n, L, sampler=FlowMapSampler(steps=2, reward=zeros, particles=K, tilt=20.0), seed=3)
    count = lambda tokens: (tokens == 0).sum(1).float().mean()  # noqa: E731
    assert out.tokens.shape == (n, L)
    assert out.reward_evaluations == n * K * 3  # lookaheads at t_0, t_1 and the final score
    assert count(out.tokens) > count(plain.tokens)


def test_bad_steering_options_are_refused():
    with pytest.raises(ValueError, match="steer towards a reward; give one"):
        FlowMapSampler(guidance=1.0)
    with pytest.raises(ValueError, match="steers nothing without guidance"):
        FlowMapSampler(reward=COUNT)
    with pytest.raises(ValueError, match="unknown guidance_schedule 'cosine'; choices: constant, linear, tilt"):
        FlowMapSampler(reward=COUNT, guidance=1.0, guidance_schedule="cosine")
    with pytest.raises(ValueError, match="particles must be a positive integer"):
        FlowMapSampler(reward=COUNT, particles=0)
    with pytest.raises(ValueError, match="guidance must be non-negative"):
        FlowMapSampler(reward=COUNT, guidance=-1.0)
    with pytest.raises(ValueError, match="dense state"):
        FlowMapSampler(reward=COUNT, guidance=1.0, fused=True)


def test_best_of_n_picks_the_highest_reward_of_n_draws(model):
    from flowzoo.best_of_n import best_of_n

    zeros = {"name": "token_count", "init_args": {"tokens": [0]}}
    n, N = 8, 4
    from flowzoo.sampling import batch_seed

    draws = model.generate(n * N, L, sampler=FlowMapSampler(steps=2), seed=batch_seed(5, 0)).tokens  # one batch: the seed's first
    out = best_of_n(model, zeros, N, n, L, sampler=FlowMapSampler(steps=2), seed=5)
    expected = (draws == 0).sum(1).float().view(n, N).max(1).values
    assert torch.equal(out.reward, expected) and torch.equal((out.tokens == 0).sum(1).float(), expected)
    assert (out.reward_evaluations, out.nfe) == (n * N, 2)
    split = best_of_n(model, zeros, N, n, L, sampler=FlowMapSampler(steps=2), seed=5, batch_size=n * N)
    assert torch.equal(split.tokens, out.tokens)
    regex = {"name": "regex", "init_args": {"pattern": "a"}}  # values only: fine for best-of-N
    from flowzoo import registry

    text = registry.build("reward", regex).bind(V, decode=lambda ids: ["a" * int((row == 0).sum()) for row in ids])
    tilted = best_of_n(model, text, N, n, L, sampler=FlowMapSampler(steps=2), seed=5, tilt=50.0)
    assert torch.equal(tilted.reward, expected)  # lambda = 50: the draw is the best one
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n(model, zeros, 0, n, L)


def test_sample_command_steers_and_prints_the_reward(tmp_path, capsys):
    import json

    from flowzoo.checkpoints import save_pretrained
    from flowzoo.cli import main

    tiny = FlowLM(backbone=TINY, vocab_size=16, sampler={"name": "flow_map", "init_args": {"steps": 2}})
    tiny.data_spec = {"name": "markov", "init_args": {"num_states": 16, "seq_len": 6, "num_train": 8, "num_val": 8}}
    saved = save_pretrained(tiny, tmp_path / "model")
    args = ["sample", "--model", str(saved), "--num-samples", "4", "--show", "0", "--reward", "token_count"]
    assert main([*args, "--reward-option", "words=[New,York]", "--option", "guidance=1.0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sampler"]["init_args"]["reward"]["init_args"]["words"] == ["New", "York"]
    assert 0 <= result["metrics"]["reward"] <= 6 and result["reward_evaluations"] == 4 * 3
    assert main([*args, "--reward-option", "tokens=[3,5]"]) == 0  # scored only, not steered
    assert "reward" in json.loads(capsys.readouterr().out)["metrics"]
    assert main([*args, "--reward-option", "words=[Paris]", "--option", "guidance=1.0"]) == 2
    assert "words not in the vocabulary: ['Paris']" in capsys.readouterr().err
    assert main(["sample", "--model", str(saved), "--option", "particles=4"]) == 2
    assert "name one with --reward NAME" in capsys.readouterr().err
    assert main([*args[:-2], "--reward", "regex", "--reward-option", "pattern=New", "--option", "guidance=1.0"]) == 2
    assert "reward 'regex' is not differentiable" in capsys.readouterr().err


def test_gradient_steering_keeps_a_prompt_and_particles_with_a_prompt_are_refused(model):
    from flowzoo.prompt import Prompt

    prompt = Prompt.prefix([1, 2, 3], L)
    for sampler in (FlowMapSampler(steps=2, reward=COUNT, guidance=0.5), EulerSampler(steps=3, reward=COUNT, guidance=0.5)):
        out = model.generate(4, L, sampler=sampler, seed=0, prompt=prompt)
        assert out.tokens[:, :3].tolist() == [[1, 2, 3]] * 4  # the known positions come back unchanged
    for sampler in (FlowMapSampler(steps=2, reward=COUNT, particles=2), EulerSampler(steps=3, reward=COUNT, particles=2)):
        with pytest.raises(ValueError, match="particle steering with a prompt is not supported"):
            model.generate(4, L, sampler=sampler, seed=0, prompt=prompt)
