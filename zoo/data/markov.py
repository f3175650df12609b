"""A synthetic language from a seeded sparse Markov chain whose likelihood is known exactly."""

from __future__ import annotations

import math
import warnings

import datasets
import numpy as np
import torch

from flowzoo.data.base import TokenDataModule
from flowzoo.errors import DataError
from flowzoo.registry import register
from flowzoo.validation import check_choice

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu", "da", "fe", "go", "hi", "ju", "wa"]
_PAIRS = [("New", "York"), ("San", "Diego"), ("Los", "Angeles"), ("Hong", "Kong")]


CHAIN_VERSIONS = (1, 2)


class MarkovChain:
    """A sparse chain over ``num_states`` words: a random Hamiltonian cycle through every word plus extra random
    successors (a cycle whose every step is kept makes the chain irreducible; see ``chain_version``).

    Every state has between 1 and ``max_successors`` successors; states with one successor are
    deterministic pairs ("New" -> "York"). ``transition`` is the (V, V) matrix P(b | a),
    ``stationary`` its stationary law pi, from which the first token is drawn.

    ``chain_version`` 2 puts each named pair's second word right after its first on the cycle, so the chain is
    irreducible for every seed and every word occurs. Version 1 (the default, the chain every committed figure on
    ``markov`` and ``mirror`` was measured on) overrides the first word's cycle successor with the second word, which
    cuts the cycle: most chains then have words of stationary probability 0 that never occur (the default 48-word
    chain one, "wafe"; the default 32-word ``mirror`` chain one; 16 words with seed 3: 14). A warning names them.
    """

    def __init__(self, num_states: int = 48, max_successors: int = 4, deterministic_share: float = 0.25, seed: int = 0,
                 chain_version: int = 1):
        if num_states < 2 * len(_PAIRS) + 2:
            raise DataError(f"a Markov language needs at least {2 * len(_PAIRS) + 2} states, got {num_states}")
        if max_successors < 1:
            raise DataError(f"max_successors must be at least 1, got {max_successors}")
        check_choice(chain_version, CHAIN_VERSIONS, "chain_version", DataError)
        rng = np.random.default_rng(seed)
        V = num_states
        words = [a for pair in _PAIRS for a in pair]
        while len(words) < V:
            w = "".join(rng.choice(_SYLLABLES, size=rng.integers(1, 4)))
            if w not in words:
                words.append(w)
        P = np.zeros((V, V))
        order = [int(a) for a in rng.permutation(V)]  # the Hamiltonian cycle, in its order
        if chain_version == 2:  # each pair's second word follows its first on the cycle, so the override keeps it whole
            firsts, seconds = set(range(0, 2 * len(_PAIRS), 2)), set(range(1, 2 * len(_PAIRS), 2))  # pair i: (2i, 2i + 1)
            order = [b for a in order if a not in seconds for b in ((a, a + 1) if a in firsts else (a,))]
        successor = {int(order[i]): int(order[(i + 1) % V]) for i in range(V)}
        for i in range(len(_PAIRS)):  # the named pairs are deterministic: New -> York
            successor[2 * i] = 2 * i + 1
        for a in range(V):
            P[a, successor[a]] = 1.0
            is_pair_head = a < 2 * len(_PAIRS) and a % 2 == 0
            if is_pair_head or rng.random() < deterministic_share:
                continue
            extra = rng.choice(np.delete(np.arange(V), successor[a]), size=rng.integers(1, max_successors), replace=False)
            P[a, extra] = 1.0
            P[a] *= rng.dirichlet(np.ones(V))
            P[a] /= P[a].sum()
        evals, evecs = np.linalg.eig(P.T)
        pi = np.abs(np.real(evecs[:, np.argmin(np.abs(evals - 1))]))
        self.words = words
        self.transition = P
        self.stationary = pi / pi.sum()
        self.chain_version = chain_version
        never = self.words_that_never_occur()
        if never:
            warnings.warn(f"this Markov chain (chain_version={chain_version}, {V} states, seed {seed}) is not irreducible: "
                          f"{len(never)} of its {V} words never occur ({', '.join(never[:8])}{', ...' if len(never) > 8 else ''}); "
                          "chain_version=2 builds it irreducible", stacklevel=2)

    def words_that_never_occur(self) -> list[str]:
        """The words of stationary probability 0 (pi_a = 0): no sequence of the language holds them."""
        return [self.words[a] for a in np.flatnonzero(self.stationary <= 1e-12)]

    @property
    def num_states(self) -> int:
        return len(self.words)

    def entropy_rate(self) -> float:
        """H = -sum_a pi_a sum_b P(b|a) log P(b|a), in nats per transition."""
        P = self.transition
        logs = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
        return float(-(self.stationary[:, None] * P * logs).sum())

    def sample(self, num: int, length: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((num, length), dtype=np.int64)
        out[:, 0] = rng.choice(self.num_states, size=num, p=self.stationary)
        cdf = np.cumsum(self.transition, axis=1)
        for i in range(1, length):
            u = rng.random(num)[:, None]
            out[:, i] = np.minimum((u > cdf[out[:, i - 1]]).sum(1), self.num_states - 1)
        return out

    def evaluate(self, tokens: torch.Tensor, floor: float = 1e-6) -> dict[str, float]:
        """Valid-transition rate, exact NLL per transition (invalid ones scored log ``floor``), its gap to H, and
        the total variation between the samples' bigrams and the chain's law pi(a) P(b|a) (:meth:`bigram_tv`)."""
        x = tokens.detach().cpu().long().numpy()
        probs = self.transition[x[:, :-1], x[:, 1:]]  # (B, L-1)
        nll = float(-np.log(np.maximum(probs, floor)).mean())
        H = self.entropy_rate()
        return {"valid_transitions": float((probs > 0).mean()), "nll": nll, "entropy_rate": H, "nll_gap": nll - H,
                "bigram_tv": self.bigram_tv(self.bigram_counts(x))}

    def log_prob(self, tokens, floor: float = 0.0) -> np.ndarray:
        """log p(x) = log pi(x_0) + sum_l log P(x_{l+1} | x_l) per row of ``tokens`` (B, L); with ``floor`` > 0 an
        impossible step is scored log ``floor`` instead of -inf."""
        x = np.asarray(tokens, dtype=np.int64)
        steps = np.concatenate([self.stationary[x[:, :1]], self.transition[x[:, :-1], x[:, 1:]]], axis=1)  # (B, L)
        with np.errstate(divide="ignore"):
            return np.log(np.maximum(steps, floor)).sum(1)

    def log_marginal(self, tokens, known) -> np.ndarray:
        """log p(x_K) per row: the probability of the known positions K (``known`` (B, L) bool) with every other
        position summed out, by the forward algorithm alpha_{l+1}(b) = sum_a alpha_l(a) P(b|a) [b = x_{l+1} if l+1 in K]."""
        x, k = np.asarray(tokens, dtype=np.int64), np.asarray(known, dtype=bool)
        B, L = x.shape
        V = self.num_states
        clamp = np.ones((B, L, V))
        clamp[k] = 0.0
        clamp[k, x[k]] = 1.0  # (B, L, V): 1 where position l may hold token v
        alpha = self.stationary[None, :] * clamp[:, 0]
        log_scale = np.zeros(B)
        for step in range(1, L):
            norm = alpha.sum(1, keepdims=True)
            with np.errstate(divide="ignore"):
                log_scale += np.log(norm[:, 0])
            alpha = (alpha / np.where(norm > 0, norm, 1.0)) @ self.transition * clamp[:, step]
        with np.errstate(divide="ignore"):
            return log_scale + np.log(alpha.sum(1))

    def conditional_metrics(self, tokens, known, floor: float = 1e-6) -> dict[str, float]:
        """Completions (B, L) of the known positions (``known`` (B, L) bool, the prompt or the context of a hole).

        ``completion_nll``: the exact -log p(x_U | x_K) = log p(x_K) - log p(x) per generated token (an impossible
        completion scored with log ``floor`` per invalid step); ``boundary_valid``: the share of valid transitions
        between a known and a generated position (the prompt's edge, both edges of a hole); ``inner_valid``: the
        share between two generated positions.
        """
        x, k = np.asarray(tokens, dtype=np.int64), np.asarray(known, dtype=bool)
        if x.shape != k.shape or x.ndim != 2:
            raise ValueError(f"tokens and known must both have shape (B, L), got {x.shape} and {k.shape}")
        generated = (~k).sum(1)
        if (generated == 0).any():
            raise ValueError("every row needs at least one generated (unknown) position")
        nll = (self.log_marginal(x, k) - self.log_prob(x, floor)) / generated
        valid = self.transition[x[:, :-1], x[:, 1:]] > 0  # (B, L-1)
        boundary = k[:, :-1] != k[:, 1:]
        inner = ~k[:, :-1] & ~k[:, 1:]
        share = lambda mask: float(valid[mask].mean()) if mask.any() else float("nan")  # noqa: E731
        return {"completion_nll": float(nll.mean()), "boundary_valid": share(boundary), "inner_valid": share(inner)}

    def bigram_counts(self, x: np.ndarray) -> np.ndarray:
        """(V, V) counts of the transitions (a, b) in the rows of ``x`` (B, L)."""
        counts = np.zeros((self.num_states, self.num_states))
        np.add.at(counts, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1.0)
        return counts

    def bigram_tv(self, counts: np.ndarray) -> float:
        """1/2 sum_{a,b} |n_ab / n - pi(a) P(b|a)|: every position of the chain's own rows has the law pi (the first
        token is drawn from it), so this is near 0 for real data (sampling noise) and large for a sampler that only
        produces valid but too few, or too uneven, transitions (mode collapse), which the valid rate cannot see."""
        return float(0.5 * np.abs(counts / max(counts.sum(), 1.0) - self.stationary[:, None] * self.transition).sum())


class SyntheticData(TokenDataModule):
    """A language sampled here from a seed: ``num_train`` and ``num_val`` rows drawn by :meth:`rows` with the seeds
    seed + 1 and seed + 2 (the language itself is built from ``seed``)."""

    def __init__(self, num_train: int, num_val: int, seed: int, seq_len: int, batch_size: int, num_workers: int,
                 metric: str | None) -> None:
        super().__init__(seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, metric=metric)
        if num_train < 1 or num_val < 1:
            raise DataError(f"num_train and num_val must be positive, got {num_train} and {num_val}")
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def rows(self, n: int, seed: int):
        """``n`` sequences of the language, (n, seq_len) token ids, drawn with ``seed``."""
        raise NotImplementedError

    def held_out(self, num: int) -> torch.Tensor:
        """The first ``num`` validation rows (num, seq_len) as token ids: prompts from data no model trained on."""
        if not 1 <= num <= self.num_val:
            raise DataError(f"asked for {num} held-out rows; the validation split has {self.num_val} (num_val)")
        return torch.as_tensor(self.splits["validation"][:num]["input_ids"]).long()

    def build_splits(self):
        return {
            "train": datasets.Dataset.from_dict({"input_ids": self.rows(self.num_train, self.seed + 1)}),
            "validation": datasets.Dataset.from_dict({"input_ids": self.rows(self.num_val, self.seed + 2)}),
        }


@register("data", "markov")
class MarkovData(SyntheticData):
    """Synthetic sparse Markov language (with deterministic pairs like New -> York); exact likelihood known."""

    def __init__(
        self,
        num_states: int = 48,
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
        self.chain = MarkovChain(num_states, max_successors, deterministic_share, seed, chain_version)

    @property
    def vocab_size(self) -> int:
        return self.chain.num_states

    def rows(self, n: int, seed: int):
        return self.chain.sample(n, self.seq_len, seed)

    def decode(self, tokens):
        return [" ".join(self.chain.words[int(i)] for i in row) for row in tokens.tolist()]

    def evaluate_samples(self, tokens):
        return self.chain.evaluate(tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text`` (split on whitespace); an unknown word is refused, naming it."""
        index = {w: i for i, w in enumerate(self.chain.words)}
        unknown = [w for w in text.split() if w not in index]
        if unknown:
            raise DataError(f"words not in the Markov language: {', '.join(unknown[:5])}")
        return [index[w] for w in text.split()]

    def evaluate_completions(self, tokens, known):
        """The exact conditional figures of completions of the known positions (MarkovChain.conditional_metrics)."""
        return self.chain.conditional_metrics(torch.as_tensor(tokens).cpu().numpy(), torch.as_tensor(known).cpu().numpy())

    def __repr__(self) -> str:
        return f"MarkovData(states={self.vocab_size}, H={self.chain.entropy_rate():.3f} nats, log V={math.log(self.vocab_size):.3f})"
