"""The Dirichlet probability path of Dirichlet Flow Matching (Stark et al., 2024)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from flowzoo.paths.base import ProbabilityPath, expand_time
from flowzoo.registry import register


def _gauss_legendre(nodes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of Gauss-Legendre quadrature on [0, 1], float64."""
    z, w = np.polynomial.legendre.leggauss(nodes)
    return torch.tensor((z + 1) / 2, device=device), torch.tensor(w / 2, device=device)


@functools.lru_cache(maxsize=16)
def _gauss_jacobi_np(nodes: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Golub-Welsch: nodes z and weights of int_{-1}^{1} (1-z)^alpha f(z) dz / 2^alpha (weights sum to 2/(alpha+1))."""
    n = np.arange(nodes, dtype=np.float64)
    ab = 2 * n + alpha
    diag = np.where(n == 0, -alpha / (alpha + 2), -(alpha**2) / np.where(ab * (ab + 2) == 0, 1, ab * (ab + 2)))
    k = n[1:]
    abk = 2 * k + alpha
    off = np.sqrt(4 * k * (k + alpha) * k * (k + alpha) / (abk**2 * (abk + 1) * (abk - 1)))
    evals, evecs = np.linalg.eigh(np.diag(diag) + np.diag(off, 1) + np.diag(off, -1))
    return evals, (2 / (alpha + 1)) * evecs[0] ** 2


def _gauss_jacobi(nodes: int, alpha: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    z, w = _gauss_jacobi_np(nodes, float(alpha))
    return torch.tensor(z, device=device), torch.tensor(w, device=device)


def dirichlet_c_factor(x: torch.Tensor, a: torch.Tensor, b: float, nodes: int = 32) -> torch.Tensor:
    """C(x, a) = -d/da I_x(a, b) / (f_{a,b}(x) (1 - x)), f the Beta(a, b) density, I its CDF (float64).

    With T ~ Beta(a, b) and m = E log T = psi(a) - psi(a + b), -d/da I_x = int_0^x f (m - log t) dt
    = int_x^1 f (log t - m) dt. The side is chosen so the integrand never changes sign (x < e^m: [0, x];
    otherwise [x, 1]) and the density enters as the ratio f(t)/f(x) in log space, so neither the Beta
    function nor x^(a-1) (1-x)^(b-1) over- or underflows. Lower side: Gauss-Legendre in s, t = x s^2;
    upper side: Gauss-Jacobi with weight (1-t)^(b-1) on [x, 1], exact for the sharp factor when V is large.
    x: (...), a broadcastable.
    """
    x = x.double().clamp(1e-12, 1 - 1e-12)
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device).expand_as(x)
    s, w = _gauss_legendre(nodes, x.device)  # (N,)
    m = torch.special.digamma(a) - torch.special.digamma(a + b)
    lower = torch.log(x) < m
    xe, ae, me = x[..., None], a[..., None], m[..., None]
    # lower: (2x/(1-x)) int_0^1 s (f(xs^2)/f(x)) (m - log x - 2 log s) ds
    log_r = 2 * (ae - 1) * torch.log(s) + (b - 1) * (torch.log1p(-xe * s**2) - torch.log1p(-xe))
    low = (2 * x / (1 - x)) * (w * s * torch.exp(log_r) * (me - torch.log(xe) - 2 * torch.log(s))).sum(-1)
    # upper: (1/2) int_{-1}^{1} ((1-z)/2)^(b-1) (t/x)^(a-1) (log t - m) dz, t = x + (1-x)(1+z)/2
    z, wj = _gauss_jacobi(nodes, b - 1, x.device)  # weight (1 - z)^(b-1) on [-1, 1], normalised by 2^(b-1)
    t = xe + (1 - xe) * (1 + z) / 2
    high = 0.5 * (wj * torch.exp((ae - 1) * (torch.log(t) - torch.log(xe))) * (torch.log(t) - me)).sum(-1)
    return torch.where(lower, low, high)


@register("path", "dirichlet")
class DirichletPath(ProbabilityPath):
    """x_t ~ Dir(1 + tau(t) e_{x1}) on the simplex, tau(t) = tau_max t: Dir(1) (uniform) at t = 0.

    Velocity (DFM): b_t(x) = tau_max sum_i D_t(x)_i C(x_i, 1 + tau) (e_i - x), with C from
    :func:`dirichlet_c_factor` (b = V - 1); each term moves x toward vertex i keeping the ratios of the
    other coordinates, which transports Beta(1 + tau, V - 1), the law of x_i, along tau.
    Training times follow DFM: tau ~ Exp(mean ``time_scale``) truncated to [0, tau_max]
    (``time_scale=None``: uniform); sampling steps are uniform in tau. Euler steps are projected back
    onto the simplex (:meth:`project`).
    """

    state = "continuous"
    mean_denoiser = False  # flow maps use the secant form x + (t - s) v_{s,t}

    def __init__(self, tau_max: float = 8.0, time_scale: float | None = 2.0, nodes: int = 32) -> None:
        super().__init__()
        if tau_max <= 0:
            raise ValueError(f"tau_max must be positive, got {tau_max}")
        if time_scale is not None and time_scale <= 0:
            raise ValueError(f"time_scale must be positive (or null for uniform times), got {time_scale}")
        if nodes < 4:
            raise ValueError(f"nodes must be at least 4, got {nodes}")
        self.tau_max, self.time_scale, self.nodes = tau_max, time_scale, nodes
        self.t_max = 1.0  # tau_max is finite: no singularity at t = 1

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        return self.tau_max * t

    def time_from_uniform(self, u):
        if self.time_scale is None:
            return u
        c = 1 - math.exp(-self.tau_max / self.time_scale)  # inverse CDF of Exp(scale) truncated to tau_max
        return (-self.time_scale * torch.log1p(-u.clamp(0.0, 1.0) * c) / self.tau_max).clamp(0.0, 1.0)

    def schedule(self, steps: int, end: float = 1.0, device=None) -> torch.Tensor:
        """steps + 1 times uniform in tau (DFM integrates uniformly in alpha = 1 + tau)."""
        return torch.linspace(0.0, end, steps + 1, device=device)

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        """Dir(1, ..., 1): normalised Exp(1) draws. (B, L, V)."""
        u = torch.rand(batch, length, vocab_size, generator=generator, device=device, dtype=torch.float64)
        e = -torch.log1p(-u)
        return (e / e.sum(-1, keepdim=True)).float()

    def sample(self, x1, t, vocab_size, generator=None):
        """x_t ~ Dir(1 + tau(t) onehot(x1)) as normalised Gamma draws: (B, L, V)."""
        conc = 1 + expand_time(self.tau(t)).double() * torch.nn.functional.one_hot(x1, vocab_size).double()
        if generator is not None:  # Gamma sampling has no generator argument: seed a forked RNG from it
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            with torch.random.fork_rng(devices=[] if x1.device.type == "cpu" else [x1.device]):
                torch.manual_seed(seed)
                g = torch._standard_gamma(conc)
        else:
            g = torch._standard_gamma(conc)
        g = g.clamp_min(1e-300)
        return (g / g.sum(-1, keepdim=True)).to(torch.float32)

    def c_factor(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """C(x_i, 1 + tau(t)) for every coordinate: (B, L, V) float64."""
        return dirichlet_c_factor(x, expand_time(1 + self.tau(t)), x.shape[-1] - 1, self.nodes)

    def velocity(self, x, denoised, t):
        """b_t(x) = tau_max (D * C - (sum_i D_i C_i) x): sums to zero, and b_j = tau_max D_j C_j >= 0 where x_j = 0."""
        weight = denoised.double() * self.c_factor(x, t)  # (B, L, V)
        v = self.tau_max * (weight - weight.sum(-1, keepdim=True) * x.double())
        return v.to(x.dtype)

    def denoiser(self, x, velocity, t):
        """The inverse of :meth:`velocity` for x on the simplex: D = (b / tau_max + lambda x) / C, with
        lambda = sum_i D_i C_i = (1 - sum_i b_i / (tau_max C_i)) / sum_i x_i / C_i fixed by sum_i D_i = 1."""
        if velocity.shape != x.shape:
            raise ValueError(f"the velocity must have the state's shape {tuple(x.shape)}, got {tuple(velocity.shape)}")
        c = self.c_factor(x, t)  # (B, L, V) float64, positive
        b, xd = velocity.double() / self.tau_max, x.double()
        lam = (1 - (b / c).sum(-1, keepdim=True)) / (xd / c).sum(-1, keepdim=True)
        return ((b + lam * xd) / c).to(x.dtype)

    @staticmethod
    def project(x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto the simplex along the last axis (sort-based)."""
        u, _ = torch.sort(x, dim=-1, descending=True)
        css = u.cumsum(-1) - 1
        k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        rho = ((u - css / k) > 0).sum(-1, keepdim=True).clamp_min(1)
        theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
        return (x - theta).clamp_min(0)

    def incompatibility(self, parts):
        objective = parts.get("objective")
        name = getattr(objective, "registry_name", "")
        if name == "psd" or (name == "distill" and getattr(objective, "target", "") == "semigroup"):
            return "objective", (
                "the semigroup target gamma delta_{s,u} + (1-gamma) delta_{u,t} assumes the mean-denoiser form of the "
                "linear path; on the Dirichlet path the secant velocities at different points do not mix that way "
                "(use lsd, or distill with target=lagrangian)"
            )
        sampler = parts.get("sampler")
        if sampler is not None and sampler.renoises:  # churn (flowzoo.samplers.churn)
            return "sampler", ("re-noising (gamma > 0 or churn_rate > 0) assumes the Gaussian linear interpolant; "
                               "use gamma=0 and churn_rate=0 on the Dirichlet path")
        return None
