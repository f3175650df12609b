"""Exact denoiser, flow and flow map when the data are a handful of fixed sequences (for tests).

Data: K sequences a_k (ids (K, L); A_k their one-hot (L, V)) with prior weights pi_k, linear path
x_t = (1-t) sigma eps + t A. The posterior is a softmax over k of log pi_k - ||x - t A_k||^2 / (2 sigma^2 (1-t)^2),
so D_t(x) = sum_k w_k(x, t) A_k in closed form. In the variables r = t/(1-t), y = x/(1-t) the ODE
dx/dt = (D_t(x) - x)/(1-t) becomes dy/dr = D and the mean denoiser is the average of D over r:

    delta_{s,t}(x) = (y_t - y_s) / (r_t - r_s),    X_{s,t}(x) = (1-t) y_t,

integrated here with RK4 on a grid uniform in q = -log(1-t) = log(1+r) (float64). Past r_max the
posterior has collapsed, D is constant and the rest of the integral is exact; delta_{s,1} = D at the end.

:class:`ExactFlowLM` wraps it in the FlowLM interface (``logits``, ``denoise``, ``path``, ``head``,
``vocab_size``) so samplers and objectives can be run on the exact solution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowzoo.heads.categorical import CategoricalHead
from flowzoo.paths.linear import LinearPath


class ExactDenoiser:
    """The exact D_t, delta_{s,t} and X_{s,t} for data uniform (or ``weights``) over ``sequences`` (K, L)."""

    def __init__(self, sequences: torch.Tensor, vocab_size: int, sigma: float = 1.0, weights=None, steps: int = 1000, r_max: float = 1e4):
        sequences = torch.as_tensor(sequences).long()
        if sequences.dim() != 2:
            raise ValueError(f"sequences must be ids of shape (K, L), got {tuple(sequences.shape)}")
        self.sequences, self.vocab_size, self.sigma = sequences, vocab_size, sigma
        self.onehot = F.one_hot(sequences, vocab_size).double()  # (K, L, V)
        w = torch.ones(len(sequences), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.log_prior = (w / w.sum()).log()  # (K,)
        self.steps, self.r_max = steps, r_max
        self.q_max = math.log1p(r_max)

    # --- the denoiser in (r, y) variables ---------------------------------------------
    def _denoise_ry(self, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """D = sum_k softmax_k(log pi_k + (r <y, A_k> - r^2 L / 2) / sigma^2) A_k; y (B, L, V), r (B,)."""
        seqs = self.sequences.to(y.device)  # (K, L)
        K, L = seqs.shape
        index = seqs.t()[None].expand(y.shape[0], L, K)  # (B, L, K): token of sequence k at position l
        dots = y.gather(2, index).sum(1)  # <y, A_k>, (B, K); gathers, not matmuls: cheap and single-threaded
        logits = self.log_prior.to(y.device) + (r[:, None] * dots - 0.5 * r[:, None] ** 2 * L) / self.sigma**2
        w = logits.softmax(-1)[:, None, :].expand(-1, L, -1)  # (B, L, K)
        return torch.zeros_like(y).scatter_add(2, index, w)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_t(x) = E[A | x_t = x], (B, L, V) float64; at t = 1 the nearest sequence (in the limit)."""
        x, t = x.double(), t.double()
        one_minus = (1 - t).clamp_min(1e-100)
        return self._denoise_ry(x / one_minus[:, None, None], t / one_minus)

    def mean_denoiser(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """delta_{s,t}(x) for s <= t: the average of D over r in [r_s, r_t] along the exact trajectory."""
        x, s, t = x.double(), s.double(), t.double()
        cap = 1 - 1 / (1 + self.r_max)  # path time where r = r_max
        s_c, t_c = s.clamp(max=cap), t.clamp(max=cap)
        q_s, q_e = -torch.log1p(-s_c), -torch.log1p(-t_c)  # (B,)
        y = x / (1 - s_c)[:, None, None]
        y_s = y
        h = (q_e - q_s) / self.steps

        def f(q, y):  # dy/dq = D(y, r) (1 + r), r = e^q - 1
            r = torch.expm1(q)
            return self._denoise_ry(y, r) * (1 + r)[:, None, None]

        q = q_s
        h3 = h[:, None, None]
        for _ in range(self.steps):
            k1 = f(q, y)
            k2 = f(q + h / 2, y + h3 / 2 * k1)
            k3 = f(q + h / 2, y + h3 / 2 * k2)
            k4 = f(q + h, y + h3 * k3)
            y = y + h3 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            q = q + h
        r_s, r_e = s_c / (1 - s_c), t_c / (1 - t_c)
        D_end = self._denoise_ry(y, r_e)
        # beyond r_max D is constant: y_t = y_end + (r_t - r_e) D_end; at t = 1 (r_t = inf) delta = D_end
        at_one = t >= 1
        r_t = torch.where(at_one, torch.ones_like(t), t) / (1 - torch.where(at_one, torch.zeros_like(t), t))
        span = (r_t - r_s).clamp_min(1e-300)[:, None, None]
        finite = (y - y_s) / span + ((r_t - r_e) / span[:, 0, 0])[:, None, None] * D_end
        delta = torch.where(at_one[:, None, None], D_end, finite)
        short = (t - s) < 1e-9
        collapsed = s >= cap
        return torch.where((short | collapsed)[:, None, None], self.denoise(x, torch.where(collapsed, s, t)), delta)

    def flow_map(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x) = ((1-t)/(1-s)) x + ((t-s)/(1-s)) delta_{s,t}(x) (identity at s = 1)."""
        a, b = LinearPath.map_weights(s.double(), t.double())
        return a[:, None, None] * x.double() + b[:, None, None] * self.mean_denoiser(x, s, t)


class ExactFlowLM(nn.Module):
    """A stand-in for FlowLM whose network is the exact solution: ``logits = log delta_{s,t}`` (or log D_t)."""

    def __init__(self, sequences: torch.Tensor, vocab_size: int, sigma: float = 1.0, steps: int = 1000) -> None:
        super().__init__()
        self.exact = ExactDenoiser(sequences, vocab_size, sigma=sigma, steps=steps)
        self.path = LinearPath(sigma=sigma)
        self.head = CategoricalHead()
        self.vocab_size = vocab_size
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def logits(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        p = self.exact.denoise(x, t) if s is None else self.exact.mean_denoiser(x, s, t)
        return p.clamp_min(1e-30).log().float()  # (B, L, V)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.denoise(self.logits(x, t, s))
