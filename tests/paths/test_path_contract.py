"""Round-trip identities of the path contract, once per registered path.

Every path registered under ``path`` is checked for what it declares, and skipped, with the reason, for what it
does not: a path that refuses flow maps (``flow_map_refusal()``) has no X_{s,t}; a path with no ODE velocity
(``velocity`` raises NotImplementedError) has no velocity <-> denoiser conversion; the semigroup of the exact map
needs an exact reference, which flowzoo.exact holds for the linear path only.
"""

import pytest
import torch

from flowzoo import registry
from flowzoo.exact import ExactDenoiser

V, L, B = 7, 5, 3
SEQS = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [5, 5, 6, 6, 5]])  # the exact reference's data
PATHS = registry.names("path")

# The exact mean denoiser delta_{s,t}(x) of a path, where one is known (flowzoo.exact: data uniform over SEQS).
EXACT = {"linear": lambda path: ExactDenoiser(SEQS, V, sigma=path.sigma, steps=200)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _times(v, dtype=torch.float32):
    return torch.full((B,), float(v), dtype=dtype)


def _flow_map_path(name):
    path = registry.build("path", name)
    refusal = path.flow_map_refusal()
    if refusal is not None:
        pytest.skip(f"the {name} path declares no flow map: {refusal}")
    return path


def _state(path, t):
    """x_t ~ p_t(. | x1) for random clean ids: a state the path actually visits at time t (B, L, V)."""
    return path.sample(torch.randint(0, V, (B, L)), _times(t), V)


def _ode_path(name):
    path = registry.build("path", name)
    x, t = torch.zeros(B, L, V), _times(0.5)
    try:
        path.velocity(x, torch.full_like(x, 1 / V), t)
    except NotImplementedError as e:
        pytest.skip(f"the {name} path declares no ODE velocity: {e}")
    try:
        path.denoiser(x, torch.zeros_like(x), t)
    except NotImplementedError:
        pytest.skip(f"the {name} path declares a velocity but no denoiser (its inverse)")
    return path


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 1.0])
def test_flow_map_at_s_equal_t_is_the_identity(name, t):
    """X_{t,t}(x) = x whatever the network predicts, including t = 0 and t = 1."""
    path = _flow_map_path(name)
    x = _state(path, min(t, 0.9))
    prediction = torch.softmax(3 * torch.randn(B, L, V), -1)
    assert torch.equal(path.flow_map(x, prediction, _times(t), _times(t)), x)


@pytest.mark.parametrize("name", PATHS)
def test_flow_map_leaves_the_diagonal_along_the_velocity(name):
    """d/dt X_{s,t}(x) at t = s is b_s(x) = velocity(x, prediction, s): the map is tangent to the ODE."""
    path = _flow_map_path(name)
    s = _times(0.3, torch.float64)
    x = _state(path, 0.3).double()
    prediction = torch.softmax(3 * torch.randn(B, L, V, dtype=torch.float64), -1)
    h = 1e-4
    slope = (path.flow_map(x, prediction, s, s + h) - x) / h  # X_{s,t} is affine in t in both forms
    assert torch.allclose(slope, path.velocity(x, prediction, s), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", PATHS)
def test_exact_flow_map_composes_as_a_semigroup(name):
    """X_{u,t}(X_{s,u}(x)) = X_{s,t}(x) for the path's flow map fed the exact mean denoiser delta_{s,t}."""
    path = _flow_map_path(name)
    if name not in EXACT:
        pytest.skip(f"no exact flow map is known for the {name} path (flowzoo.exact holds the linear path's)")
    exact = EXACT[name](path)

    def X(x, s, t):
        s, t = _times(s, torch.float64), _times(t, torch.float64)
        return path.flow_map(x, exact.mean_denoiser(x, s, t), s, t)

    x = path.sample_prior(B, L, V).double()
    for s, u, t in ((0.0, 0.3, 0.8), (0.1, 0.5, 1.0), (0.0, 0.9, 1.0), (0.2, 0.2, 0.6), (0.4, 0.7, 0.7)):
        assert (X(X(x, s, u), u, t) - X(x, s, t)).abs().max() < 1e-6, (s, u, t)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_velocity_and_denoiser_invert_each_other(name, t):
    """denoiser(x, velocity(x, D, t), t) = D and velocity(x, denoiser(x, b, t), t) = b at states the path visits."""
    path = _ode_path(name)
    x, tt = _state(path, t), _times(t)
    D = torch.softmax(3 * torch.randn(B, L, V), -1)
    assert torch.allclose(path.denoiser(x, path.velocity(x, D, tt), tt), D, atol=1e-5)
    # b: a velocity the path can produce, from a denoiser off the simplex (sums to one, entries of both signs)
    b = path.velocity(x, 2 * D - torch.softmax(torch.randn(B, L, V), -1), tt)
    assert torch.allclose(path.velocity(x, path.denoiser(x, b, tt), tt), b, atol=1e-4 * (1 + b.abs().max().item()))
