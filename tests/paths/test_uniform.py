"""Uniform-state diffusion and Duo: each formula against a transcription of Duo's code (s-sahoo/duo, algo.py,
trainer_base.py, utils.py), the sampler and objective on tiny models.

Measured max abs differences, float64, random inputs (script: the functions of this file on the inputs of the
tests): posterior 1.6e-15; NELBO 2.8e-14 (values up to 84); the Diffusion Transformation operator against scipy
quad of Duo's integrands, V in {12, 1000, 50257}, gamma in [-5, -1]: alpha 7.8e-13, d alpha / d gamma 3.7e-13.
The assertions carry looser bounds.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.objectives.duo import relaxed_sample
from flowzoo.paths.uniform import UniformPath, argmax_alpha, gaussian_coefficients, uniform_nelbo, uniform_posterior

V, L = 12, 10
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def _model(objective="duo", **sampler_args):
    model = FlowLM(
        backbone=TINY, path="uniform", objective=objective, sampler={"name": "uniform_ancestral", "init_args": sampler_args}, vocab_size=V
    )
    with torch.no_grad():  # the output layer starts at zero: perturb it so the predictions depend on the input
        for p in model.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# --- transcriptions of Duo's code (read from s-sahoo/duo, written out here; Duo's time tau: 0 = data) -------------


def _duo_posterior_from_x0(x0, xt, alpha_s, alpha_t, vocab_size):
    """algo.py DUO_BASE._posterior_from_x0."""
    alpha_ts = alpha_t / alpha_s
    d_alpha = alpha_s - alpha_t
    xt_one_hot = F.one_hot(xt, vocab_size).to(x0.dtype)
    return (
        alpha_t * vocab_size * x0 * xt_one_hot + (alpha_ts - alpha_t) * xt_one_hot + d_alpha * x0 + (1 - alpha_ts) * (1 - alpha_s) / vocab_size
    ) / (alpha_t * vocab_size * torch.gather(x0, -1, xt[..., None]) + (1 - alpha_t))


def _duo_nll_per_token(log_x_theta, xt, x0, alpha_t, dalpha_t, vocab_size):
    """algo.py DUO_BASE.nll_per_token (alpha_t, dalpha_t: (B, 1); dalpha_t = d alpha / d tau <= 0)."""
    x_reconst = log_x_theta.exp()
    x_bar_theta = vocab_size * alpha_t[:, :, None] * x_reconst + 1 - alpha_t[:, :, None]
    coeff = dalpha_t / (vocab_size * alpha_t)
    x_eq_xt = (x0 == xt).to(log_x_theta.dtype)
    x_neq_xt = 1 - x_eq_xt
    xbar_xt = (1 - alpha_t) + vocab_size * alpha_t * x_eq_xt
    xbar_theta_xt = torch.gather(x_bar_theta, -1, xt.unsqueeze(-1)).squeeze(-1)
    xbar_theta_x = torch.gather(x_bar_theta, -1, x0.unsqueeze(-1)).squeeze(-1)
    term1 = vocab_size * (1 / xbar_xt - 1 / xbar_theta_xt)
    const = (1 - alpha_t) / (vocab_size * alpha_t + 1 - alpha_t)
    term2_coefs = x_eq_xt * const + x_neq_xt
    term2_offset = ((vocab_size - 1) * const * x_eq_xt - (1 / const) * x_neq_xt) * const.log()
    term2_theta = -term2_coefs * (x_bar_theta.log().sum(-1) - vocab_size * xbar_theta_xt.log())
    term2_theta = term2_theta - vocab_size * alpha_t / (1 - alpha_t) * (xbar_theta_x.log() - xbar_theta_xt.log()) * x_neq_xt
    term2 = term2_theta + term2_offset
    return coeff * (term1 - term2)


def _duo_discrete_prob_map(gamma_t, N):
    """utils.py _discrete_prob_map: the integrand of I(gamma) (scipy.stats.norm)."""
    from scipy.stats import norm

    snr_sqrt = np.exp(-gamma_t / 2)

    def value(x):
        return norm.pdf(x, loc=snr_sqrt, scale=1) * norm.cdf(x, scale=1) ** (N - 1)

    return value


def _duo_discrete_prob_grad(gamma_t, N):
    """utils.py _discrete_prob_grad: the integrand of dI/dgamma."""
    from scipy.stats import norm

    snr_sqrt = np.exp(-gamma_t / 2)

    def value(x):
        coef = -0.5 * snr_sqrt * (x - snr_sqrt)
        return coef * norm.pdf(x, loc=snr_sqrt, scale=1) * norm.cdf(x, scale=1) ** (N - 1)

    return value


def _duo_gumbel_tau_inverse(step, start, end, log10_start, log10_end):
    """algo.py DUO._compute_gumbel_tau_inverse."""
    delta = log10_end - log10_start
    if step < start:
        tau = log10_start
    elif step < end:
        tau = log10_start + (step - start) / (end - start) * delta
    else:
        tau = -10
    return 10 ** (-tau)


# --- formula checks ----------------------------------------------------------------------------------------------


def test_posterior_matches_duo_on_random_predictions():
    torch.manual_seed(0)
    B = 64
    x0 = torch.softmax(3 * torch.randn(B, L, V, dtype=torch.float64), -1)
    xt = torch.randint(0, V, (B, L))
    alpha_t = torch.rand(B, 1, 1, dtype=torch.float64) * 0.98 + 0.01
    alpha_s = alpha_t + (1 - alpha_t) * torch.rand(B, 1, 1, dtype=torch.float64)
    ours = uniform_posterior(x0, xt, alpha_s, alpha_t)
    ref = _duo_posterior_from_x0(x0, xt, alpha_s, alpha_t, V)
    assert (ours - ref).abs().max().item() < 1e-14
    assert torch.allclose(ours.sum(-1), torch.ones(B, L, dtype=torch.float64))
    # the noise-removing step (alpha_s = 1) and a one-hot x0 (the exact posterior)
    one = torch.ones_like(alpha_t)
    assert (uniform_posterior(x0, xt, one, alpha_t) - _duo_posterior_from_x0(x0, xt, one, alpha_t, V)).abs().max() < 1e-14
    onehot = F.one_hot(torch.randint(0, V, (B, L)), V).double()
    assert (uniform_posterior(onehot, xt, alpha_s, alpha_t) - _duo_posterior_from_x0(onehot, xt, alpha_s, alpha_t, V)).abs().max() < 1e-14


def test_exact_posterior_is_bayes_on_the_forward_kernels():
    """q(x_s | x_t, x) q(x_t | x) = q(x_t | x_s) q(x_s | x), summed over x_t it gives back q(x_s | x)."""
    path = UniformPath()
    x = torch.tensor([[3]])
    onehot = F.one_hot(x, V).double()
    a_s, a_t = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    q_t = a_t * onehot + (1 - a_t) / V  # q(x_t | x), (1, 1, V)
    marginal = sum(q_t[0, 0, i] * uniform_posterior(onehot, torch.tensor([[i]]), a_s, a_t) for i in range(V))
    assert torch.allclose(marginal, a_s * onehot + (1 - a_s) / V, atol=1e-15)
    assert path.alpha(torch.tensor(1.0, dtype=torch.float64)) == 1.0 and abs(path.alpha(torch.tensor(0.0, dtype=torch.float64)).item() - 1e-3) < 1e-15


def test_nelbo_matches_duo_on_random_logits():
    torch.manual_seed(1)
    B = 64
    path = UniformPath(eps=1e-3)
    log_probs = torch.log_softmax(3 * torch.randn(B, L, V, dtype=torch.float64), -1)
    x1 = torch.randint(0, V, (B, L))
    t = torch.rand(B, dtype=torch.float64) * path.t_max
    xt = path.sample(x1, t, V)
    assert (xt == x1).any() and (xt != x1).any()
    alpha, rate = path.alpha(t)[:, None], torch.full((B, 1), 1 - path.eps, dtype=torch.float64)
    ours = uniform_nelbo(log_probs, x1, xt, alpha, rate)
    ref = _duo_nll_per_token(log_probs, xt, x1, alpha, -rate, V)  # Duo's dalpha is d alpha / d tau = -rate
    assert (ours - ref).abs().max().item() < 1e-11
    assert (ours >= -1e-12).all()  # a KL-type integrand


def test_nelbo_of_an_exact_predictor_is_zero_and_a_uniform_one_is_positive():
    model = _model()
    model.eval()
    x1 = torch.randint(0, V, (32, L))
    model.logits = lambda x, t, s=None: 1e4 * F.one_hot(x1, V).float()
    assert abs(model.objective(model, x1)["loss"].item()) < 1e-6
    model.logits = lambda x, t, s=None: torch.zeros(*x1.shape, V)
    assert model.objective(model, x1)["loss"].item() > 0.1


def test_diffusion_transformation_operator_matches_duo_quadrature():
    pytest.importorskip("scipy")
    from scipy.integrate import quad

    worst_alpha = worst_grad = 0.0
    for vocab in (12, 1000, 50257):
        gammas = torch.tensor([-5.0, -3.5, -2.6, -1.75, -1.0], dtype=torch.float64)
        alpha, grad = argmax_alpha(gammas, vocab)
        for g, a, d in zip(gammas.tolist(), alpha.tolist(), grad.tolist()):
            integral, _ = quad(_duo_discrete_prob_map(g, vocab), -np.inf, np.inf)
            dintegral, _ = quad(_duo_discrete_prob_grad(g, vocab), -np.inf, np.inf)
            ref_alpha = (vocab * integral - 1) / (vocab - 1)  # algo.py DUO._gamma_to_alphat_integral
            ref_grad = vocab * dintegral / (vocab - 1)
            worst_alpha = max(worst_alpha, abs(a - ref_alpha))
            worst_grad = max(worst_grad, abs(d - ref_grad))
    assert worst_alpha < 1e-8 and worst_grad < 1e-8, (worst_alpha, worst_grad)
    # Duo trains with a forward difference of step 1e-3 in gamma (DUO._gamma_to_alpha_dalpha_cached): within 1e-3 of ours
    g = torch.tensor([-3.0], dtype=torch.float64)
    fd = 1000 * (argmax_alpha(g + 1e-3, 50257)[0] - argmax_alpha(g, 50257)[0])
    assert abs(fd.item() - argmax_alpha(g, 50257)[1].item()) < 1e-3


def test_argmax_of_the_gaussian_latent_is_the_uniform_state_process():
    """P(argmax w = x) = alpha + (1 - alpha)/V and every other token equally likely (Duo's duality), by Monte Carlo."""
    torch.manual_seed(2)
    n = 200_000
    for gamma in (-3.0, -1.0, 0.5):
        x1 = torch.zeros(n, 1, dtype=torch.long)
        xt = relaxed_sample(x1, torch.full((n,), gamma), V).argmax(-1)
        alpha = argmax_alpha(torch.tensor([gamma], dtype=torch.float64), V)[0].item()
        freq = torch.bincount(xt.flatten(), minlength=V).double() / n
        assert abs(freq[0].item() - (alpha + (1 - alpha) / V)) < 0.005
        assert (freq[1:] - (1 - alpha) / V).abs().max().item() < 0.004
    a, s = gaussian_coefficients(torch.tensor([-2.0]))
    assert torch.allclose(a**2 + s**2, torch.ones(1)) and torch.allclose(a / s, torch.exp(torch.tensor([1.0])))


def test_curriculum_temperature_and_switch_follow_duo():
    model = _model({"name": "duo", "init_args": {"curriculum_start": 10, "curriculum_end": 20}})
    obj = model.objective
    for step in (0, 9, 10, 15, 19):
        assert math.isclose(1 / obj.temperature(step), _duo_gumbel_tau_inverse(step, 10, 20, -1.0, -2.0), rel_tol=1e-12)
    x1 = torch.randint(0, V, (8, L))
    model.train()
    assert "temperature_log10" in obj(model, x1)  # step 0 < curriculum_end: the relaxation
    model.eval()
    assert "temperature_log10" not in obj(model, x1)  # validation: the NELBO of the discrete process
    with pytest.raises(ValueError, match="curriculum_start"):
        FlowLM(backbone=TINY, path="uniform", objective={"name": "duo", "init_args": {"curriculum_start": 5, "curriculum_end": 2}},
               sampler="uniform_ancestral", vocab_size=V)


def test_relaxed_loss_backpropagates_through_the_softmax_state():
    model = _model({"name": "duo", "init_args": {"curriculum_start": 0, "curriculum_end": 100}})
    model.train()
    out = model.objective(model, torch.randint(0, V, (8, L)))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    # the tempered softmax state reaches the network through its input projection (every row gets a gradient)
    assert (model.backbone.embed.weight.grad.abs().sum(0) > 0).all()


# --- the sampler ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_removal", ["ancestral", "greedy"])
def test_sampler_with_an_exact_denoiser_returns_the_data(noise_removal):
    model = _model(steps=6, noise_removal=noise_removal).eval()
    target = torch.randint(0, V, (1, L))
    model.logits = lambda x, t, s=None: 50 * F.one_hot(target, V).float().expand(x.shape[0], L, V)
    out = model.generate(5, L, seed=0)
    assert out.nfe == 7
    assert torch.equal(out.tokens, target.expand(5, L))


def test_sampler_steps_draw_from_the_posterior_and_keep_tokens_in_range():
    model = _model(steps=4, noise_removal="none").eval()
    xs = [x for x, _ in model.sampler.iterate(model, 3, L, generator=torch.Generator().manual_seed(0))]
    assert len(xs) == 4 and all(x.shape == (3, L) and x.min() >= 0 and x.max() < V for x in xs)
    a = model.generate(3, L, seed=1).tokens
    assert torch.equal(a, model.generate(3, L, seed=1).tokens)


def test_uniform_components_refuse_other_paths():
    with pytest.raises(IncompatibleComponentsError, match="uniform"):
        FlowLM(backbone=TINY, path="masked", objective="duo", sampler="ancestral", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match="uniform"):
        FlowLM(backbone=TINY, path="masked", objective="mdlm", sampler="uniform_ancestral", vocab_size=V)
    with pytest.raises(ValueError, match="noise_removal"):
        FlowLM(backbone=TINY, path="uniform", objective="duo", sampler={"name": "uniform_ancestral", "init_args": {"noise_removal": "x"}}, vocab_size=V)


def test_reference_vocab_carries_duos_gamma_range_at_equal_alphas():
    from flowzoo.objectives.duo import gamma_range
    from flowzoo.paths.uniform import gamma_of_alpha, transfer_gamma

    model = _model({"name": "duo", "init_args": {"reference_vocab": 50257}})
    g_min, g_max = gamma_range(model.objective, V)
    for published, here in ((-3.5, g_min), (-1.75, g_max)):
        want = argmax_alpha(torch.tensor([published], dtype=torch.float64), 50257)[0]
        got = argmax_alpha(torch.tensor([here], dtype=torch.float64), V)[0]
        assert abs(want.item() - got.item()) < 1e-9
    assert g_min < g_max and abs(transfer_gamma(-2.0, V, V) + 2.0) < 1e-9
    assert abs(gamma_of_alpha(torch.tensor([0.5]), 100).item() - transfer_gamma(gamma_of_alpha(torch.tensor([0.5]), 100).item(), 100, 100)) < 1e-9
    assert gamma_range(_model().objective, V) == (-3.5, -1.75)  # off by default: Duo's published gammas as given
