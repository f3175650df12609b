"""The linear path's flow-map math: map weights, the map at the ends, the semigroup weight, tau time."""

import pytest
import torch

from flowzoo.module import FlowLM
from flowzoo.paths import LinearPath
from flowzoo.paths.base import ProbabilityPath
from helpers import L, TINY, V, corner_times


map_weights, semigroup_weight = ProbabilityPath.map_weights, ProbabilityPath.semigroup_weight


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def test_map_weights_are_finite_convex_and_identity_on_the_diagonal():
    s, t = corner_times()
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
