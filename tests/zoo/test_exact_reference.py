"""The exact denoiser / flow / flow map for a handful of fixed sequences, and samplers and losses run on it."""

import pytest
import torch

from flowzoo.exact import ExactDenoiser, ExactFlowLM
from flowzoo.objectives._flowmap import lagrangian_residual
from flowzoo.objectives.flow_map_config import FlowMapConfig
from flowzoo.objectives.lsd import LagrangianSelfDistillation
from flowzoo.objectives.psd import ProgressiveSelfDistillation
from flowzoo.samplers.euler import EulerSampler
from flowzoo.samplers.flow_map import FlowMapSampler
from flowzoo.samplers.marginal import MarginalSampler



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


V, L = 7, 5
SEQS = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [5, 5, 6, 6, 5]])


@pytest.fixture(scope="module")
def exact():
    return ExactDenoiser(SEQS, V, steps=100)


def _times(B, v):
    return torch.full((B,), float(v), dtype=torch.float64)


def test_exact_denoiser_is_a_posterior_mean_of_the_sequences(exact):
    torch.manual_seed(1)
    x = torch.randn(4, L, V)
    D = exact.denoise(x, _times(4, 0.3))
    assert torch.allclose(D.sum(-1), torch.ones(4, L, dtype=torch.float64))
    # near t = 1 a state close to a_k is denoised to a_k
    a = torch.nn.functional.one_hot(SEQS[1], V).double()[None]
    near = 0.98 * a + 0.02 * torch.randn(1, L, V)
    assert torch.allclose(exact.denoise(near, _times(1, 0.98)), a, atol=1e-6)


def test_exact_map_matches_fine_euler_integration(exact):
    torch.manual_seed(2)
    x = torch.randn(3, L, V).double()
    s, t = 0.2, 0.7
    X = exact.flow_map(x, _times(3, s), _times(3, t))
    grid = torch.linspace(s, t, 4001, dtype=torch.float64)
    y = x.clone()
    for a, b in zip(grid[:-1], grid[1:]):
        ta = a.expand(3)
        y = y + (b - a) * (exact.denoise(y, ta) - y) / (1 - ta)[:, None, None]
    assert (X - y).abs().max() < 1e-3


def test_identity_on_the_diagonal_and_semigroup(exact):
    torch.manual_seed(3)
    B = 4
    x = torch.randn(B, L, V).double()
    for v in (0.0, 0.4, 1.0):
        assert torch.equal(exact.flow_map(x, _times(B, v), _times(B, v)), x)  # X_{t,t} = x, including t = 1
    for s, u, t in ((0.0, 0.3, 0.8), (0.1, 0.5, 1.0), (0.0, 0.9, 1.0)):
        direct = exact.flow_map(x, _times(B, s), _times(B, t))
        composed = exact.flow_map(exact.flow_map(x, _times(B, s), _times(B, u)), _times(B, u), _times(B, t))
        assert (direct - composed).abs().max() < 1e-6
    # the map to t = 1 lands on a vertex: one of the sequences
    X1 = exact.flow_map(x, _times(B, 0.0), _times(B, 1.0))
    assert torch.allclose(X1.max(-1).values, torch.ones(B, L, dtype=torch.float64))
    assert all(any(torch.equal(row, seq) for seq in SEQS) for row in X1.argmax(-1))


@pytest.fixture(scope="module")
def model():
    return ExactFlowLM(SEQS, V, steps=100)


def _is_data(tokens):
    return all(any(torch.equal(row, seq) for seq in SEQS) for row in tokens)


def test_euler_with_the_exact_denoiser_reproduces_the_data(model):
    out = EulerSampler(steps=64).sample(model, 16, L, generator=torch.Generator().manual_seed(0))
    assert _is_data(out.tokens) and out.nfe == 64


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_flow_map_with_the_exact_map_reproduces_the_data(model, steps):
    out = FlowMapSampler(steps=steps).sample(model, 16, L, generator=torch.Generator().manual_seed(0))
    assert _is_data(out.tokens) and out.nfe == steps
    # and all sequences appear: the map is not collapsing onto one mode
    assert len({tuple(r) for r in out.tokens.tolist()}) == len(SEQS)


def test_one_step_map_agrees_with_many_step_euler(model):
    g = torch.Generator().manual_seed(5)
    noise = model.path.sample_prior(32, L, V, generator=g)
    X1 = model.exact.flow_map(noise, _times(32, 0.0), _times(32, 1.0)).argmax(-1)
    # Euler from the same noise
    x = noise.double()
    grid = torch.linspace(0, 0.999, 801, dtype=torch.float64)
    for a, b in zip(grid[:-1], grid[1:]):
        ta = a.expand(32)
        x = x + (b - a) * (model.exact.denoise(x, ta) - x) / (1 - ta)[:, None, None]
    assert (x.argmax(-1) == X1).float().mean() > 0.95


def test_map_losses_vanish_at_the_exact_map(model):
    torch.manual_seed(4)
    x1 = SEQS[torch.randint(0, len(SEQS), (8,))]
    psd = ProgressiveSelfDistillation(FlowMapConfig(diagonal_share=0.0, boundary=0.25))(model, x1)
    assert psd["map_kl"].abs() < 1e-4
    lsd = LagrangianSelfDistillation(FlowMapConfig(diagonal_share=0.0, boundary=0.25))(model, x1)
    assert lsd["map"] < 1e-4
    torch.manual_seed(4)  # the semi-gradient variant has the same residual, so the same fixed point
    lsd_sg = LagrangianSelfDistillation(FlowMapConfig(diagonal_share=0.0, boundary=0.25), tangent_grad=False)(model, x1)
    assert lsd_sg["map"] < 1e-4
    # a wrong map does not pass: the denoiser used as a map (delta_{s,t} = D_s) has a large residual
    class Frozen(ExactFlowLM):
        def logits(self, x, t, s=None):
            return super().logits(x, t if s is None else s)

    wrong = Frozen(SEQS, V, steps=50)
    x = model.path.sample(x1, torch.full((8,), 0.3), V)
    r = lagrangian_residual(wrong, x, torch.full((8,), 0.3), torch.full((8,), 0.9))
    assert (r**2).sum(-1).mean() > 1e-2
    r_sg = lagrangian_residual(wrong, x, torch.full((8,), 0.3), torch.full((8,), 0.9), stop_tangent=True)
    torch.testing.assert_close(r_sg, r, rtol=1e-4, atol=1e-5)  # the same value; only the gradient differs


@pytest.mark.parametrize("s,t", [(0.1, 0.6), (0.0, 0.95), (0.5, 0.55)])
def test_trajectory_target_converges_to_the_exact_mean_denoiser(model, s, t):
    """distill's trajectory target: the teacher's own path from s to t averaged into delta_{s,t}; exact teacher -> exact map."""
    from flowzoo.objectives.distill import trajectory_target

    torch.manual_seed(5)
    B = 4
    xs = model.path.sample(SEQS[torch.arange(B) % 3], torch.full((B,), s), V).double()
    us, ut = torch.full((B,), s, dtype=torch.float64), torch.full((B,), t, dtype=torch.float64)
    exact = model.exact.mean_denoiser(xs, us, ut)
    coarse = trajectory_target(model, xs, us, ut, steps=2)
    fine = trajectory_target(model, xs, us, ut, steps=32)
    assert torch.allclose(fine.sum(-1), torch.ones(B, L, dtype=fine.dtype), atol=1e-5)  # on the simplex
    assert (fine - exact).abs().max() < 2e-2
    assert (fine - exact).abs().max() < (coarse - exact).abs().max() + 1e-9


# --- the marginal sampler: each position drawn on its own from D_0 --------------------------------
def _marginals(seqs, weights, vocab):
    """D_0 of the exact denoiser: at t = 0 the posterior is the prior, so position l is token v with weight
    sum_k pi_k [a_k[l] = v], whatever the noise."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    return (torch.nn.functional.one_hot(seqs, vocab).double() * w[:, None, None]).sum(0)  # (L, V)


WEIGHTS = [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def weighted():
    m = ExactFlowLM(SEQS, V, steps=2)
    m.exact = ExactDenoiser(SEQS, V, weights=WEIGHTS, steps=2)  # non-uniform prior: D_0 is not uniform over the data
    return m


def test_marginal_sampler_is_one_evaluation_of_d0(weighted):
    calls = []
    original = weighted.denoise

    def counting(x, t, s=None):
        calls.append(t.clone())
        return original(x, t, s)

    weighted.denoise = counting
    try:
        out = MarginalSampler().sample(weighted, 6, L, generator=torch.Generator().manual_seed(0))
    finally:
        del weighted.denoise
    assert out.tokens.shape == (6, L) and out.tokens.dtype == torch.int64 and out.nfe == 1
    assert len(calls) == 1 and torch.equal(calls[0], torch.zeros(6))  # one call, at t = 0
    D0 = _marginals(SEQS, WEIGHTS, V)
    assert (D0.gather(1, out.tokens.t()) > 0).all()  # every token has mass under D_0 at its position


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_marginal_sampler_draws_positions_independently_from_d0(weighted, temperature):
    N = 6000
    tokens = MarginalSampler(temperature=temperature).sample(weighted, N, L, generator=torch.Generator().manual_seed(1)).tokens
    D0 = _marginals(SEQS, WEIGHTS, V)
    target = D0 ** (1 / temperature)
    target = target / target.sum(-1, keepdim=True)  # the draw is from p^(1/T), renormalised
    freq = torch.nn.functional.one_hot(tokens, V).double().mean(0)  # (L, V) empirical marginals
    assert (freq - target).abs().max() < 0.03  # ~4 standard errors at N = 6000
    # independence: the joint law of two positions is the product of their marginals ...
    for a, b in ((0, 1), (0, 4), (2, 3)):
        joint = torch.zeros(V, V, dtype=torch.float64)
        joint.index_put_((tokens[:, a], tokens[:, b]), torch.ones(N, dtype=torch.float64), accumulate=True)
        assert (joint / N - torch.outer(target[a], target[b])).abs().max() < 0.03
    # ... so, unlike Euler on the same model, most samples are no sequence of the data at all
    share_data = sum(tokens.eq(seq).all(1).double().mean().item() for seq in SEQS)
    expected = sum(target[torch.arange(L), seq].prod().item() for seq in SEQS)
    assert abs(share_data - expected) < 0.02 and share_data < 0.2


def test_marginal_sampler_through_generate_on_a_tiny_flow():
    from flowzoo.module import FlowLM

    model = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}, vocab_size=V)
    a = model.generate(4, L, sampler="marginal", seed=3)
    b = model.generate(4, L, sampler={"name": "marginal", "init_args": {"temperature": 1.0}}, seed=3)
    assert a.tokens.shape == (4, L) and a.nfe == 1 and torch.equal(a.tokens, b.tokens)  # seeded: reproducible
    assert ((a.tokens >= 0) & (a.tokens < V)).all()
