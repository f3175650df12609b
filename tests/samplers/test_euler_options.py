"""The Euler sampler's options: its time grid (``linspace``, flowzoo's, to t_max; ``uniform``, FLM's, u = i / n) and
self-conditioning (each evaluation reads the last one's D)."""

import pytest
import torch

from flowzoo.module import FlowLM

TINY = {"name": "dit", "init_args": {"width": 16, "depth": 1, "heads": 2, "cond_dim": 16}}


def visited_times(path: dict, steps: int, grid: str | None) -> list[float]:
    """The path times at which a sample of ``steps`` Euler steps evaluates the network."""
    args = {"steps": steps} if grid is None else {"steps": steps, "grid": grid}
    model = FlowLM(backbone=TINY, path=path, sampler={"name": "euler", "init_args": args}, vocab_size=7)
    seen, logits = [], model.logits

    def recording(x, t, s=None):
        seen.append(float(t[0]))
        return logits(x, t, s)

    model.logits = recording
    out = model.generate(2, 3, seed=0)
    assert out.nfe == steps == len(seen)
    return seen


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_linspace_is_the_default_and_ends_at_t_max(steps):
    want = torch.linspace(0.0, 0.999, max(steps - 1, 1) + 1)[:steps].tolist()
    assert visited_times("linear", steps, None) == pytest.approx(want)
    assert visited_times("linear", steps, "linspace") == pytest.approx(want)


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_uniform_grid_visits_i_over_n(steps):
    assert visited_times("linear", steps, "uniform") == pytest.approx([i / steps for i in range(steps)])


def test_uniform_grid_is_uniform_in_the_paths_uniform_time():
    """On the tau path the grid is u = i / n mapped to path time, as every other schedule of the path."""
    path = {"name": "linear", "init_args": {"time": "tau"}}
    model = FlowLM(backbone=TINY, path=path, vocab_size=7)
    want = model.path.time_from_uniform(torch.arange(4) / 4.0).tolist()
    assert visited_times(path, 4, "uniform") == pytest.approx(want)
    assert visited_times(path, 4, "uniform") != pytest.approx(visited_times(path, 4, "linspace"))


def test_an_unknown_grid_lists_the_choices():
    with pytest.raises(ValueError, match="unknown grid 'log'; choices: linspace, uniform"):
        FlowLM(backbone=TINY, sampler={"name": "euler", "init_args": {"grid": "log"}}, vocab_size=7)


def test_a_self_conditioning_backbone_reads_the_previous_evaluations_prediction():
    torch.manual_seed(0)
    backbone = {"name": "dit", "init_args": {**TINY["init_args"], "self_condition": True}}
    model = FlowLM(backbone=backbone, sampler={"name": "euler", "init_args": {"steps": 4}}, vocab_size=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    given, made, logits = [], [], model.logits

    def recording(x, t, s=None, self_cond=None):
        given.append(self_cond)
        out = logits(x, t, s, self_cond=self_cond)
        made.append(model.head.denoise(out))
        return out

    model.logits = recording
    model.generate(3, 5, seed=0)
    assert given[0] is None and len(given) == 4
    for i in range(1, 4):
        torch.testing.assert_close(given[i], made[i - 1])  # D_{t_i}(x | D_{t_{i-1}})
    x, t = torch.randn(3, 5, 7), torch.full((3,), 0.5)
    assert (logits(x, t, self_cond=made[0]) - logits(x, t)).abs().max() > 1e-3  # the input is read
    given.clear()
    off = model.generate(3, 5, seed=0, sampler={"name": "euler", "init_args": {"steps": 4, "self_condition": False}})
    assert given == [None] * 4  # self_condition=False: D^ = 0 at every step
    assert not torch.equal(off.tokens, model.generate(3, 5, seed=0).tokens)


def test_self_conditioning_sampling_runs_on_the_dense_state():
    backbone = {"name": "dit", "init_args": {**TINY["init_args"], "self_condition": True}}
    with pytest.raises(Exception, match="self-conditioning .* runs on the dense state"):
        FlowLM(backbone=backbone, sampler={"name": "euler", "init_args": {"fused": True}}, vocab_size=7)


def test_churn_zero_is_the_ode_and_churn_draws_reproducible_other_samples():
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, vocab_size=7)
    with torch.no_grad():  # random weights everywhere (the zero-initialised adaLN and unembedding make D uniform)
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    draw = lambda **kw: model.generate(16, 5, sampler={"name": "euler", "init_args": {"steps": 6, **kw}}, seed=0).tokens  # noqa: E731
    assert torch.equal(draw(gamma=0.0), draw())
    assert torch.equal(draw(gamma=0.7), draw(gamma=0.7))
    assert not torch.equal(draw(gamma=0.7), draw())


def test_renoise_swaps_a_share_gamma_of_the_implied_noise():
    """x = (1-t) sigma eps + t delta becomes (1-t) sigma (sqrt(1-gamma^2) eps + gamma z) + t delta: the state stays on
    the path at t around the same prediction, with the fresh z drawn from the generator."""
    from flowzoo.samplers.churn import renoise
    from flowzoo.state import DenseState

    model = FlowLM(backbone=TINY, path={"name": "linear", "init_args": {"sigma": 0.5}}, vocab_size=7)
    state, t = DenseState(model), torch.tensor([0.2, 0.9])
    eps, delta = torch.randn(2, 3, 7), torch.softmax(torch.randn(2, 3, 7), -1)
    a, b = (1 - t).view(-1, 1, 1) * 0.5, t.view(-1, 1, 1)
    x = a * eps + b * delta
    for gamma in (0.0, 0.6, 1.0):
        out = renoise(state, x, delta, t, gamma, torch.Generator().manual_seed(3))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, a * ((1 - gamma**2) ** 0.5 * eps + gamma * z) + b * delta)


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_churn_outside_zero_one_is_refused(gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        FlowLM(backbone=TINY, sampler={"name": "euler", "init_args": {"gamma": gamma}}, vocab_size=7)


def test_churn_is_refused_on_the_dirichlet_path():
    from flowzoo.errors import IncompatibleComponentsError

    with pytest.raises(IncompatibleComponentsError, match=r"sampler 'euler'.*gamma"):
        FlowLM(backbone=TINY, path="dirichlet", sampler={"name": "euler", "init_args": {"gamma": 0.5}}, vocab_size=7)


def test_churn_rate_keeps_the_same_noise_correlation_over_time_at_any_step_count():
    """gamma = sqrt(1 - exp(-2 lambda du)) per step: the implied noise keeps exp(-lambda) of itself over the whole
    of uniform time, whatever the number of steps (a fixed gamma keeps (1 - gamma^2)^(n/2), which falls with n)."""
    import math

    from flowzoo.samplers.churn import gamma_from_rate
    from flowzoo.samplers.euler import EulerSampler

    path = FlowLM(backbone=TINY, vocab_size=7).path
    for grid in ("linspace", "uniform"):
        for steps in (8, 128, 1024):
            sampler = EulerSampler(steps=steps, grid=grid, churn_rate=6.0)
            du = path.t_max / (steps - 1) if grid == "linspace" else 1.0 / steps  # one step, in uniform time
            kept = (1 - sampler.step_gamma(path) ** 2) ** (0.5 / du)  # what 1/du such steps keep: one unit of time
            assert math.isclose(kept, math.exp(-6.0), rel_tol=1e-9)
    assert math.isclose(gamma_from_rate(6.0, 0.999 / 127), 0.3, abs_tol=2e-3)  # the documented correspondence
    assert EulerSampler(steps=128, gamma=0.3).step_gamma(path) == 0.3


def test_churn_rate_samples_as_the_gamma_it_gives():
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, vocab_size=7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    from flowzoo.samplers.euler import EulerSampler

    gamma = EulerSampler(steps=6, churn_rate=2.0).step_gamma(model.path)
    draw = lambda **kw: model.generate(16, 5, sampler={"name": "euler", "init_args": {"steps": 6, **kw}}, seed=0).tokens  # noqa: E731
    assert torch.equal(draw(churn_rate=2.0), draw(gamma=gamma))
    assert not torch.equal(draw(churn_rate=2.0), draw())


@pytest.mark.parametrize("options, message", [
    ({"churn_rate": -1.0}, "churn_rate must be a finite number >= 0"),
    ({"churn_rate": float("inf")}, "churn_rate must be a finite number >= 0"),
    ({"churn_rate": 6.0, "gamma": 0.3}, "set gamma .* or churn_rate .*, not both"),
])
def test_bad_churn_rate_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FlowLM(backbone=TINY, sampler={"name": "euler", "init_args": options}, vocab_size=7)


def test_churn_rate_is_refused_on_the_dirichlet_path():
    from flowzoo.errors import IncompatibleComponentsError

    with pytest.raises(IncompatibleComponentsError, match=r"sampler 'euler'.*churn_rate"):
        FlowLM(backbone=TINY, path="dirichlet", sampler={"name": "euler", "init_args": {"churn_rate": 6.0}}, vocab_size=7)
