"""Uniform-state discrete diffusion (USDM/UDLM, Schiff et al. 2025; Duo, Sahoo et al. 2025) and its Gaussian dual.

Flowzoo time runs from noise (t = 0) to data (t = 1); Duo's time is tau = 1 - t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowzoo.paths.base import ProbabilityPath
from flowzoo.registry import register


@register("path", "uniform")
class UniformPath(ProbabilityPath):
    """Uniform-state diffusion (UDLM/Duo): each token kept with probability alpha(t), else redrawn uniformly from the V tokens.

    Each token is kept with probability alpha(t) and replaced by a token drawn uniformly from the V tokens otherwise:

      q(x_t | x) = alpha(t) onehot(x) + (1 - alpha(t)) / V,   alpha(t) = 1 - (1 - eps)(1 - t)  (log-linear, Duo's default).

    The prior (t = 0, up to eps) is uniform over the vocabulary; there is no extra input symbol. The network is
    always told the noise level (Duo needs time conditioning): ``network_time`` = sigma / -log(eps) with
    sigma = -log alpha, Duo's conditioning sigma rescaled into [0, 1]. A process with another alpha (the Gaussian
    curriculum, :mod:`flowzoo.objectives.duo`) is fed to the network at the log-linear time of the same alpha,
    :meth:`time_of_alpha`, so the network's input always says "noise level alpha" whatever schedule produced it.
    """

    state = "discrete"
    extra_tokens = 0
    mean_denoiser = False

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.eps = eps
        self.t_max = 1.0 - eps  # Duo trains on its time tau in [eps, 1]: flowzoo t in [0, 1 - eps]

    # --- schedule -------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """P(token not resampled) = 1 - (1 - eps)(1 - t)."""
        return 1 - (1 - self.eps) * (1 - t)

    def alpha_rate(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / dt in flowzoo time (= -d alpha / d tau in Duo's): 1 - eps for the log-linear schedule."""
        return torch.full_like(torch.as_tensor(t, dtype=torch.float32), 1 - self.eps)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Duo's conditioning sigma = -log alpha(t)."""
        return -torch.log(self.alpha(t))

    def time_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """The flowzoo time at which the log-linear schedule has this alpha: t = 1 - (1 - alpha) / (1 - eps)."""
        return 1 - (1 - alpha) / (1 - self.eps)

    def network_time(self, t):
        return self.sigma(t) / -math.log(self.eps)

    def schedule(self, steps: int, end: float = 1.0, device=None) -> torch.Tensor:
        """steps + 1 times from 0 to ``end``, uniform in t (Duo's linspace(1, eps) in its time)."""
        return torch.linspace(0.0, end, steps + 1, device=device)

    # --- states ---------------------------------------------------------------------------
    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        """Uniform token ids (B, L)."""
        return torch.randint(0, vocab_size, (batch, length), generator=generator, device=device)

    def sample(self, x1, t, vocab_size, generator=None):
        """x_t: x1 where u >= 1 - alpha(t), a uniform token elsewhere (which may equal x1); (B, L) long."""
        u = torch.rand(x1.shape, generator=generator, device=x1.device)
        noise = torch.randint(0, vocab_size, x1.shape, generator=generator, device=x1.device)
        resample = u < 1 - self.alpha(t).reshape(-1, 1)
        return torch.where(resample, noise, x1)

    def velocity(self, x, denoised, t):
        raise NotImplementedError("the uniform path is a jump process with no ODE velocity; sample it with the 'uniform_ancestral' sampler")


def uniform_posterior(x0: torch.Tensor, xt: torch.Tensor, alpha_s: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """q(x_s | x_t, x) of the uniform-state process for s before t in Duo's time (alpha_s >= alpha_t): (B, L, V).

    Bayes' rule on the two forward kernels, with a = alpha_t / alpha_s (the kernel from s to t):

      q(x_s | x_t, x) oc [a 1{x_s = x_t} + (1 - a)/V] [alpha_s x_{x_s} + (1 - alpha_s)/V],

    normalised over x_s. ``x0`` (B, L, V) is onehot(x), or the denoiser's prediction x_theta (the sampler's
    approximate posterior; the expression is linear in x); ``alpha_s``, ``alpha_t`` broadcast against (B, L, 1).
    This is Duo's ``_posterior_from_x0`` (checked in tests/paths/test_uniform.py); alpha_s = 1 gives the last,
    noise-removing step.
    """
    V = x0.shape[-1]
    kept = alpha_t / alpha_s
    from_t = kept * F.one_hot(xt, V).to(x0.dtype) + (1 - kept) / V  # q(x_t | x_s) as a function of x_s
    from_x = alpha_s * x0 + (1 - alpha_s) / V  # q(x_s | x)
    joint = from_t * from_x
    return joint / joint.sum(-1, keepdim=True)


def uniform_nelbo(log_probs: torch.Tensor, x1: torch.Tensor, xt: torch.Tensor, alpha: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Per-token continuous-time NELBO (B, L) of the uniform-state process (the UDLM diffusion loss Duo trains).

    ``log_probs`` (B, L, V) is log x_theta(x_t, t); ``alpha`` and ``rate`` = d alpha/dt (flowzoo time, >= 0)
    broadcast against (B, L). With xbar = V alpha onehot(x) + 1 - alpha, xbar_theta = V alpha x_theta + 1 - alpha,
    i = x_t, r_j = xbar_j / xbar_i and r_theta,j = xbar_theta,j / xbar_theta,i:

      NELBO_t = (alpha' / (V alpha)) [ sum_j r_j log(r_j / r_theta,j) - V (1/xbar_i - 1/xbar_theta,i) ].

    Zero when x_theta = onehot(x). Duo's ``DUO_BASE.nll_per_token`` computes the same integrand with its
    terms grouped by whether x_t = x (checked in tests/paths/test_uniform.py).
    """
    V = log_probs.shape[-1]
    alpha = torch.as_tensor(alpha, dtype=log_probs.dtype, device=log_probs.device)
    a = alpha[..., None]  # broadcasts against (B, L, V)
    xbar = V * a * F.one_hot(x1, V).to(log_probs.dtype) + 1 - a  # (B, L, V)
    xbar_theta = V * a * log_probs.exp() + 1 - a
    xbar_i = xbar.gather(-1, xt[..., None])  # (B, L, 1)
    xbar_theta_i = xbar_theta.gather(-1, xt[..., None])
    log_r = xbar.log() - xbar_i.log()
    log_r_theta = xbar_theta.log() - xbar_theta_i.log()
    divergence = (log_r.exp() * (log_r - log_r_theta)).sum(-1)  # (B, L)
    reciprocal = V * (1 / xbar_i - 1 / xbar_theta_i).squeeze(-1)
    return rate / (V * alpha) * (divergence - reciprocal)


# --- the Gaussian dual (Duo): the uniform-state process as the argmax of Gaussian diffusion on one-hots -----


def gaussian_coefficients(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha~, sigma~) of the variance-preserving Gaussian process w = alpha~ onehot(x) + sigma~ eps at log-SNR -gamma:
    alpha~^2 = sigmoid(-gamma), sigma~^2 = sigmoid(gamma) (Duo's ``_q_xt_gaussian``)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def argmax_alpha(gamma: torch.Tensor, vocab_size: int, points: int = 4097) -> tuple[torch.Tensor, torch.Tensor]:
    """The Diffusion Transformation operator (Duo Eq. 10): alpha of the uniform-state process argmax(w_gamma), and
    d alpha / d gamma; both shaped like ``gamma``.

      alpha(gamma) = (V I(nu) - 1) / (V - 1),  I(nu) = int phi(z - nu) Phi(z)^(V-1) dz,  nu = alpha~/sigma~ = exp(-gamma/2),

    I(nu) being P(the clean coordinate is the largest of V). d alpha/d gamma = V/(V-1) int -(nu/2)(z - nu) phi(z - nu)
    Phi(z)^(V-1) dz. Duo tabulates I with scipy's quad on a grid of 1e5 gammas per tokenizer; here both integrals are
    taken by the trapezoid rule in float64 on ``points`` nodes over nu +- 12 (tests/paths/test_uniform.py compares them
    with quad of Duo's integrands).
    """
    g = gamma.double().reshape(-1, 1)
    nu = torch.exp(-g / 2)  # (N, 1)
    base = torch.linspace(-12.0, 12.0, points, dtype=torch.float64, device=g.device)[None]
    z = base + nu  # nodes centred on nu: the integrands are bounded by phi(z - nu)
    log_cdf = torch.special.log_ndtr(z) * (vocab_size - 1)
    density = torch.exp(-0.5 * (z - nu) ** 2 + log_cdf) / math.sqrt(2 * math.pi)  # (N, points)
    integral = torch.trapezoid(density, z, dim=-1)
    derivative = torch.trapezoid(-0.5 * nu * (z - nu) * density, z, dim=-1)
    scale = vocab_size / (vocab_size - 1)
    alpha = (scale * integral - 1 / (vocab_size - 1)).reshape(gamma.shape)
    return alpha.to(gamma.dtype), (scale * derivative).reshape(gamma.shape).to(gamma.dtype)


def gamma_of_alpha(alpha: torch.Tensor, vocab_size: int, iterations: int = 60) -> torch.Tensor:
    """The inverse of :func:`argmax_alpha`: the gamma whose argmax process keeps a token with probability ``alpha``,
    by bisection on [-30, 30] (alpha decreases in gamma)."""
    target = torch.as_tensor(alpha, dtype=torch.float64)
    lo, hi = torch.full_like(target, -30.0), torch.full_like(target, 30.0)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = argmax_alpha(mid, vocab_size)[0] > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def transfer_gamma(gamma: float, from_vocab: int, to_vocab: int) -> float:
    """The gamma giving, at ``to_vocab`` tokens, the argmax-process alpha that ``gamma`` gives at ``from_vocab``: a
    curriculum published for one tokenizer (Duo's GPT-2, 50,257) carried to another at the same kept-token rates."""
    alpha = argmax_alpha(torch.tensor([gamma], dtype=torch.float64), from_vocab)[0]
    return float(gamma_of_alpha(alpha, to_vocab)[0])
