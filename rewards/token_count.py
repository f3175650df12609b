"""``token_count``: the soft count of a set of tokens, r(x) = sum_l sum_{w in W} x^l_w."""

from __future__ import annotations

from typing import Sequence

import torch

from flowzoo.registry import register
from flowzoo.rewards.base import Reward, resolve_tokens


@register("reward", "token_count")
class TokenCount(Reward):
    """Soft count of a set W of tokens: r(x) = sum_l sum_{w in W} x^l_w (on one-hots, the number of positions in W).

    Linear in the state, so its gradient is the indicator of W at every position, and with an additive reward a
    Markov chain tilted by exp(lambda r) is again a Markov chain (:class:`flowzoo.rewards.TiltedChain`): the exact
    benchmark. ``tokens`` names ids, ``words`` names entries of the bound vocabulary; ``per_token`` divides by L.
    """

    def __init__(self, tokens: Sequence[int] = (), words: Sequence[str] = (), per_token: bool = False) -> None:
        super().__init__()
        self.tokens, self.words, self.per_token = list(tokens), list(words), per_token
        self.ids: list[int] = []

    def bind(self, vocab_size, vocabulary=None, decode=None):
        super().bind(vocab_size, vocabulary, decode)
        self.ids = resolve_tokens(self, self.tokens, self.words)
        return self

    def indicator(self, device=None) -> torch.Tensor:
        """g (V,): 1 on W, 0 elsewhere, so r(x) = sum_l <x^l, g>."""
        g = torch.zeros(self.vocab_size, device=device)
        g[self.ids] = 1.0
        return g

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        r = probs[..., self.ids].sum(dim=(-1, -2))  # (B,)
        return r / probs.shape[1] if self.per_token else r

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        hit = torch.isin(tokens, torch.tensor(self.ids, device=tokens.device)).float()  # (B, L)
        return hit.mean(1) if self.per_token else hit.sum(1)
