"""A synthetic language whose constraints span the whole sequence: a Markov sentence followed by its mirror (or copy).

``markov`` couples only neighbours, so a generator that gets each neighbourhood right scores well there. Here the
second half of every sequence is fixed by the first: in ``mirror`` mode x_{L-1-i} = x_i, so the coupled positions
are 1, 3, ..., L-1 apart (every distance the sequence allows, L/2 on average); in ``copy`` mode x_{i+L/2} = x_i, so
every coupled pair is exactly L/2 apart. A parallel generator must decide both ends of a pair together, which is
where the claim that a flow map "captures correlations between tokens" is tested.

The likelihood is exact: the first half is a stationary Markov chain (:class:`flowzoo.data.markov.MarkovChain`), the
second half is deterministic given it, so

    log p(x) = log pi(x_0) + sum_{i<h-1} log P(x_{i+1} | x_i) + sum_{i>=h} log 1[x_i = x_{partner(i)}],   h = L/2,

and the entropy of a sequence is H(pi) + (h - 1) H_rate nats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowzoo.data.markov import MarkovChain, SyntheticData
from flowzoo.errors import DataError
from flowzoo.registry import register
from flowzoo.validation import check_choice

MODES = ("mirror", "copy")


class MirrorLanguage:
    """Sequences of even length L: h = L/2 tokens of a Markov chain, then their mirror (``mode="mirror"``) or copy.

    ``partner[i]`` is the position that fixes position i >= h (``-1`` for the free first half).
    """

    def __init__(self, length: int, mode: str = "mirror", num_states: int = 32, max_successors: int = 4,
                 deterministic_share: float = 0.25, seed: int = 0, chain_version: int = 1) -> None:
        check_choice(mode, MODES, "mirror mode", DataError)
        if length < 4 or length % 2:
            raise DataError(f"a mirror language needs an even sequence length of at least 4, got {length}")
        self.length, self.mode, self.half = length, mode, length // 2
        self.chain = MarkovChain(num_states, max_successors, deterministic_share, seed, chain_version)
        h = self.half
        free = np.full(h, -1)
        fixed = np.arange(h - 1, -1, -1) if mode == "mirror" else np.arange(h)
        self.partner = np.concatenate([free, fixed])  # (L,)

    @property
    def num_states(self) -> int:
        return self.chain.num_states

    def coupling_distances(self) -> list[int]:
        """The distances |i - partner(i)| between coupled positions, smallest first."""
        i = np.arange(self.half, self.length)
        return sorted(int(d) for d in np.abs(i - self.partner[self.half:]))

    def entropy_per_token(self) -> float:
        """H(x) / L with H(x) = H(pi) + (h - 1) H_rate: the chain's first half carries all the randomness."""
        pi = self.chain.stationary
        h_pi = float(-(pi * np.log(np.where(pi > 0, pi, 1.0))).sum())
        return (h_pi + (self.half - 1) * self.chain.entropy_rate()) / self.length

    def sample(self, num: int, seed: int) -> np.ndarray:
        first = self.chain.sample(num, self.half, seed)  # (N, h)
        return np.concatenate([first, first[:, self.partner[self.half:]]], axis=1)  # (N, L)

    def _check(self, tokens) -> np.ndarray:
        x = tokens.detach().cpu().long().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"mirror metrics need samples of shape (B, {self.length}), got {tuple(x.shape)}")
        return x

    def log_prob(self, tokens, floor: float = 1e-6) -> np.ndarray:
        """log p(x) per sample (B,), every impossible event (invalid transition, broken pair) scored log ``floor``."""
        x = self._check(tokens)
        h = self.half
        match = x[:, h:] == x[:, self.partner[h:]]  # (B, h)
        probs = self.chain.transition[x[:, : h - 1], x[:, 1:h]]  # (B, h-1)
        log_first = np.log(np.maximum(self.chain.stationary[x[:, 0]], floor))
        return log_first + np.log(np.maximum(probs, floor)).sum(1) + np.where(match, 0.0, math.log(floor)).sum(1)

    def pair_match_by_distance(self, tokens) -> dict[int, float]:
        """{d: share of the second-half tokens i with |i - partner(i)| = d equal to their partner}, d ascending.

        In ``mirror`` mode each distance d = 1, 3, ..., L-1 is one pair per sequence (the middle pair is 1 apart,
        the first and last tokens L-1); in ``copy`` mode every pair is L/2 apart, so there is one entry."""
        x = self._check(tokens)
        h = self.half
        match = x[:, h:] == x[:, self.partner[h:]]  # (B, h)
        distance = np.abs(np.arange(h, self.length) - self.partner[h:])  # (h,)
        return {int(d): float(match[:, distance == d].mean()) for d in np.unique(distance)}

    def evaluate(self, tokens: torch.Tensor, floor: float = 1e-6) -> dict[str, float]:
        """Exact figures of samples (B, L) of this length.

        ``pair_match``: share of the second half equal to its partner; ``valid_transitions``: share of the first
        half's transitions the chain allows; ``valid_sequences``: share with both everywhere; ``nll``: exact
        -log p(x) / L with every impossible event (an invalid transition, a broken pair) scored log ``floor``;
        ``nll_gap``: nll minus the entropy per token.
        """
        x = self._check(tokens)
        h = self.half
        match = x[:, h:] == x[:, self.partner[h:]]  # (B, h)
        probs = self.chain.transition[x[:, : h - 1], x[:, 1:h]]  # (B, h-1)
        nll = float(-self.log_prob(x, floor).mean() / self.length)
        H = self.entropy_per_token()
        return {
            "pair_match": float(match.mean()),
            "valid_transitions": float((probs > 0).mean()),
            "valid_sequences": float((match.all(1) & (probs > 0).all(1)).mean()),
            "nll": nll,
            "entropy_per_token": H,
            "nll_gap": nll - H,
        }


@register("data", "mirror")
class MirrorData(SyntheticData):
    """Long-range synthetic language: a Markov first half and its mirror (or copy); exact likelihood known."""

    def __init__(
        self,
        mode: str = "mirror",
        num_states: int = 32,
        max_successors: int = 4,
        deterministic_share: float = 0.25,
        num_train: int = 20_000,
        num_val: int = 1_000,
        seed: int = 0,
        seq_len: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        metric: str | None = None,
        chain_version: int = 1,
    ) -> None:
        super().__init__(num_train, num_val, seed, seq_len, batch_size, num_workers, metric)
        self.language = MirrorLanguage(seq_len, mode, num_states, max_successors, deterministic_share, seed, chain_version)

    @property
    def vocab_size(self) -> int:
        return self.language.num_states

    def rows(self, n: int, seed: int):
        return self.language.sample(n, seed)

    def decode(self, tokens):
        words = self.language.chain.words
        h = self.language.half
        return [" ".join(words[int(i)] for i in row[:h]) + " | " + " ".join(words[int(i)] for i in row[h:]) for row in tokens.tolist()]

    def evaluate_samples(self, tokens):
        if tokens.shape[-1] != self.language.length:
            return {}  # another length has no partner structure to score
        return self.language.evaluate(tokens)

    def __repr__(self) -> str:
        d = self.language.coupling_distances()
        return (f"MirrorData(mode={self.language.mode}, states={self.vocab_size}, L={self.seq_len}, "
                f"coupled at distances {d[0]}..{d[-1]}, H={self.language.entropy_per_token():.3f} nats/token)")
