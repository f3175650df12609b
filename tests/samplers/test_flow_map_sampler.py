"""The flow_map sampler: steps are network evaluations, the schedule follows the path time, churn, validation."""

import pytest
import torch

from flowzoo.paths import LinearPath
from flowzoo.samplers.flow_map import FlowMapSampler
from helpers import L, V, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


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


def test_flow_map_sampler_starts_from_a_given_prior_draw():
    """noise= x_0 draws what the seeded run draws from the same x_0 (so a sample can be paired with its noise);
    a draw of the wrong shape, or one combined with a prompt or fused=true, is refused."""
    from flowzoo.prompt import Prompt

    model = small_model().eval()
    for k in (1, 2, 4):
        sampler = FlowMapSampler(steps=k)
        seeded = sampler.sample(model, 5, L, generator=torch.Generator().manual_seed(3))
        x0 = model.path.sample_prior(5, L, V, generator=torch.Generator().manual_seed(3))
        given = sampler.sample(model, 5, L, noise=x0)
        assert torch.equal(given.tokens, seeded.tokens) and given.nfe == k
    other = FlowMapSampler(steps=2).sample(model, 5, L, noise=model.path.sample_prior(5, L, V, generator=torch.Generator().manual_seed(4)))
    assert not torch.equal(other.tokens, FlowMapSampler(steps=2).sample(model, 5, L, noise=x0).tokens)  # the draw is read
    with pytest.raises(ValueError, match=r"shape \(num_samples, length, V\) = \(4, 6, 11\), got \(5, 6, 11\)"):
        FlowMapSampler(steps=2).sample(model, 4, L, noise=x0)
    prompt = Prompt(torch.zeros(5, L, dtype=torch.long), torch.zeros(5, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="not with a prompt, steering or fused=true"):
        FlowMapSampler(steps=2).sample(model, 5, L, noise=x0, prompt=prompt)
    with pytest.raises(ValueError, match="not with a prompt, steering or fused=true"):
        FlowMapSampler(steps=2, fused=True).sample(model, 5, L, noise=x0)
