"""``regex``: a non-differentiable reward on decoded text, the number of matches of a pattern."""

from __future__ import annotations

import re

import torch

from flowzoo.errors import FlowzooError
from flowzoo.registry import register
from flowzoo.rewards.base import Reward


@register("reward", "regex")
class RegexReward(Reward):
    """Matches of a regular expression in the decoded text, r(x) = #matches (or 1[match] with ``count=False``).

    It reads text, so it has values but no gradient: best-of-N and particle resampling accept it; reward
    fine-tuning and gradient steering refuse it. A soft state is scored at its argmax tokens.
    """

    differentiable = False

    def __init__(self, pattern: str = "", count: bool = True) -> None:
        super().__init__()
        if not pattern:
            raise ValueError("reward 'regex' needs a pattern")
        try:
            self.compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"reward 'regex': bad pattern {pattern!r}: {err}") from None
        self.pattern, self.count = pattern, count

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.decode is None:
            raise FlowzooError("reward 'regex' reads text: bind it with a decode function (the model's tokenizer or data)")
        texts = self.decode(tokens)
        values = [len(self.compiled.findall(t)) if self.count else float(bool(self.compiled.search(t))) for t in texts]
        return torch.tensor(values, dtype=torch.float32, device=tokens.device)

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        return self.score_tokens(probs.argmax(-1))
