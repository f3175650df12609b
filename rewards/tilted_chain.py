"""The exact reward-tilted law of a Markov chain under an additive reward: again a (time-varying) Markov chain.

For rho_1(x) = pi(x_0) prod_l P(x_{l+1} | x_l) over sequences of length L and r(x) = sum_l g(x_l),

    rho_r(x) = exp(lambda r(x)) rho_1(x) / Z

factorises with the backward messages beta_{L-1} = 1, beta_l(a) = sum_b P(b|a) e^{lambda g(b)} beta_{l+1}(b):

    q_0(a) = pi(a) e^{lambda g(a)} beta_0(a) / Z,   Q_l(b | a) = P(b|a) e^{lambda g(b)} beta_{l+1}(b) / beta_l(a),

with Z = sum_a pi(a) e^{lambda g(a)} beta_0(a). So its mean reward, its entropy and the exact likelihood of any
sample are computable: the ground truth of the reward benchmark (``benchmarks/reward_markov.py``).
"""

from __future__ import annotations

import numpy as np


class TiltedChain:
    """rho_r for the chain (``stationary`` pi (V,), ``transition`` P (V, V)), per-token reward ``g`` (V,), ``lam``,
    sequences of ``length`` L. ``initial`` is q_0 (V,), ``transitions`` the (L-1, V, V) tilted Q_l."""

    def __init__(self, stationary: np.ndarray, transition: np.ndarray, g: np.ndarray, lam: float, length: int) -> None:
        pi, P, g = (np.asarray(a, dtype=np.float64) for a in (stationary, transition, g))
        V = len(pi)
        if P.shape != (V, V) or g.shape != (V,):
            raise ValueError(f"need pi (V,), P (V, V) and g (V,) with one V, got {pi.shape}, {P.shape}, {g.shape}")
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        self.pi, self.P, self.g, self.lam, self.length = pi, P, g, float(lam), length
        w = np.exp(self.lam * (g - g.max()))  # e^{lambda g}, rescaled: constants cancel in every ratio
        beta = np.ones(V)
        Q = np.zeros((max(length - 1, 0), V, V))
        for step in range(length - 2, -1, -1):  # beta_l from beta_{l+1}, each normalised to max 1
            unnorm = P * (w * beta)[None, :]  # (V, V): P(b|a) e^{lambda g(b)} beta_{l+1}(b)
            row = unnorm.sum(1)
            Q[step] = unnorm / np.where(row > 0, row, 1.0)[:, None]
            beta = row / row.max()
        start = pi * w * beta
        self.initial = start / start.sum()
        self.transitions = Q

    def marginals(self) -> np.ndarray:
        """m_l (L, V): the law of x_l under rho_r."""
        m = [self.initial]
        for Q in self.transitions:
            m.append(m[-1] @ Q)
        return np.stack(m)

    def expected_reward(self) -> float:
        """E_{rho_r}[r] = sum_l <m_l, g>."""
        return float((self.marginals() @ self.g).sum())

    def entropy(self) -> float:
        """H(rho_r) = H(q_0) + sum_l sum_a m_l(a) H(Q_l(. | a)), in nats per sequence."""
        m = self.marginals()
        total = _entropy(self.initial)
        for step, Q in enumerate(self.transitions):
            total += float(m[step] @ np.array([_entropy(row) for row in Q]))
        return total

    def log_prob(self, tokens: np.ndarray, floor: float = 1e-6) -> np.ndarray:
        """log rho_r(x) per row of ``tokens`` (B, L), impossible steps scored log ``floor``."""
        x = np.asarray(tokens, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"tokens must have shape (B, {self.length}), got {x.shape}")
        out = np.log(np.maximum(self.initial[x[:, 0]], floor))
        for step, Q in enumerate(self.transitions):
            out = out + np.log(np.maximum(Q[x[:, step], x[:, step + 1]], floor))
        return out

    def sample(self, num: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = np.empty((num, self.length), dtype=np.int64)
        x[:, 0] = rng.choice(len(self.pi), size=num, p=self.initial)
        for step, Q in enumerate(self.transitions):
            cdf = np.cumsum(Q[x[:, step]], axis=1)
            x[:, step + 1] = np.minimum((rng.random(num)[:, None] > cdf).sum(1), len(self.pi) - 1)
        return x

    def evaluate(self, tokens, floor: float = 1e-6) -> dict[str, float]:
        """Samples (B, L) against rho_r: mean reward beside the exact one, NLL under rho_r per transition beside the
        entropy per transition (their gap is the KL proxy: about 0 for samples of rho_r), valid transitions under P."""
        x = np.asarray(tokens.detach().cpu() if hasattr(tokens, "detach") else tokens, dtype=np.int64)
        per = max(self.length - 1, 1)
        nll = float(-self.log_prob(x, floor).mean() / per)
        H = self.entropy() / per
        valid = float((self.P[x[:, :-1], x[:, 1:]] > 0).mean()) if self.length > 1 else 1.0
        return {"reward": float(self.g[x].sum(1).mean()), "exact_reward": self.expected_reward(), "nll_tilted": nll,
                "entropy_tilted": H, "kl_proxy": nll - H, "valid_transitions": valid}

    @classmethod
    def for_mean_reward(cls, stationary, transition, g, length: int, target: float, hi: float = 50.0) -> "TiltedChain":
        """The tilt whose exact mean reward is ``target`` (lambda by bisection: the mean is increasing in lambda)."""
        lo_chain, hi_chain = cls(stationary, transition, g, -hi, length), cls(stationary, transition, g, hi, length)
        if not lo_chain.expected_reward() <= target <= hi_chain.expected_reward():
            raise ValueError(f"a mean reward of {target} is out of reach: |lambda| <= {hi} gives "
                             f"[{lo_chain.expected_reward():.4f}, {hi_chain.expected_reward():.4f}]")
        lo, up = -hi, hi
        for _ in range(100):
            mid = 0.5 * (lo + up)
            if cls(stationary, transition, g, mid, length).expected_reward() < target:
                lo = mid
            else:
                up = mid
        return cls(stationary, transition, g, 0.5 * (lo + up), length)


def _entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum()) if nz.size else 0.0


__all__ = ["TiltedChain"]
