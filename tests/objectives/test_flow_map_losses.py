"""The flow-map losses (lsd, psd): pair sampling, values and gradients at the corner times, the off-diagonal, bad arguments."""

import pytest
import torch

from flowzoo import registry
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.objectives._flowmap import lagrangian_residual, sample_pairs
from flowzoo.objectives.psd import semigroup_loss, semigroup_target
from flowzoo.paths import LinearPath
from helpers import B, CORNERS, L, TINY, V, corner_times, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


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


def _at_the_corners(head: str):
    """A small model with the given head and states x_s (one sequence per corner) at the corner pairs (s, t)."""
    model = small_model(head=head)
    s, t = corner_times()
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
