"""The reward contract: r(x) -> (B,) on token ids (B, L) or on soft states on the simplex (B, L, V)."""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch

from flowzoo.errors import FlowzooError
from flowzoo.registry import Component


class RewardNotDifferentiableError(FlowzooError, ValueError):
    """A method that needs the reward's gradient was given a reward that has none."""


class Reward(Component):
    """A terminal reward r(x) -> (B,) of whole sequences.

    ``reward(ids)`` takes token ids (B, L); ``reward(probs)`` takes soft states on the simplex (B, L, V) (a
    one-hot row is a token). A differentiable reward (``differentiable = True``) is a smooth function of the soft
    state, so ``torch.autograd.grad(reward(probs).sum(), probs)`` is the dense signal that reward fine-tuning and
    steering use; a non-differentiable one (a predicate on decoded text) gives values only, and methods that need a
    gradient refuse it through :meth:`require_gradient`.

    Rewards that name words or read text are bound to a vocabulary first: ``bind(vocab_size, vocabulary, decode)``,
    with ``vocabulary`` the token strings by id and ``decode`` a function from ids (B, L) to texts.
    """

    differentiable: ClassVar[bool] = True

    def __init__(self) -> None:
        self.vocab_size: int | None = None
        self.vocabulary: Sequence[str] | None = None
        self.decode: Callable[[torch.Tensor], list[str]] | None = None

    def bind(self, vocab_size: int, vocabulary: Sequence[str] | None = None,
             decode: Callable[[torch.Tensor], list[str]] | None = None) -> "Reward":
        """Attach the model's vocabulary (size, token strings by id, a decoder); returns ``self``."""
        if vocab_size < 2:
            raise ValueError(f"a reward needs a vocabulary of at least 2 tokens, got {vocab_size}")
        self.vocab_size, self.vocabulary, self.decode = vocab_size, vocabulary, decode
        return self

    def resolve(self, model) -> "Reward":
        """Load what the reward reads (a judge, a classifier) as a model of ``model``'s class; the callers that bind
        a reward to a model call it. Nothing to load for most rewards: returns ``self``."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is None:
            raise FlowzooError(f"reward {self.registry_name!r} is not bound to a vocabulary; call reward.bind(vocab_size, ...) first")
        if x.dim() == 2 and not x.is_floating_point():
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got values in [{int(x.min())}, {int(x.max())}]")
            return self.score_tokens(x)
        if x.dim() == 3 and x.is_floating_point():
            if x.shape[-1] != self.vocab_size:
                raise ValueError(f"a soft state must have shape (B, L, {self.vocab_size}), got {tuple(x.shape)}")
            return self.score(x)
        raise ValueError(f"a reward takes token ids (B, L) or soft states (B, L, V), got {tuple(x.shape)} of {x.dtype}")

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        """r on soft states (B, L, V) -> (B,)."""
        raise NotImplementedError

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """r on token ids (B, L) -> (B,); by default the soft reward of their one-hots."""
        return self.score(torch.nn.functional.one_hot(tokens, self.vocab_size).float())

    def require_gradient(self, who: str) -> None:
        """Refuse this reward for ``who`` (a method that needs grad r) if it has no gradient."""
        if not self.differentiable:
            raise RewardNotDifferentiableError(
                f"{who} needs the gradient of the reward, and reward {self.registry_name!r} is not differentiable "
                "(it reads decoded text); use a method that needs only reward values (best-of-N, particle resampling, "
                "the policy_gradient objective)"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args.items())
        return f"{type(self).__name__}({args})"


def resolve_tokens(reward: Reward, tokens: Sequence[int], words: Sequence[str]) -> list[int]:
    """Ids named directly or as words of the bound vocabulary; an unknown word is refused with examples."""
    ids = [int(t) for t in tokens]
    if words:
        if reward.vocabulary is None:
            raise FlowzooError(f"reward {reward.registry_name!r} names words {list(words)!r} but has no vocabulary bound")
        index = {w: i for i, w in enumerate(reward.vocabulary)}
        missing = [w for w in words if w not in index]
        if missing:
            sample = ", ".join(repr(w) for w in list(reward.vocabulary)[:8])
            raise ValueError(f"reward {reward.registry_name!r}: words not in the vocabulary: {missing}; it has e.g. {sample}")
        ids += [index[w] for w in words]
    bad = [t for t in ids if not 0 <= t < (reward.vocab_size or 0)]
    if bad:
        raise ValueError(f"reward {reward.registry_name!r}: token ids {bad} outside [0, {reward.vocab_size})")
    if not ids:
        raise ValueError(f"reward {reward.registry_name!r} needs at least one token or word")
    return sorted(set(ids))

