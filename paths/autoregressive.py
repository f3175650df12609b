"""The autoregressive "path": no noise, the sequence is revealed left to right after a start token."""

from __future__ import annotations

import torch

from flowzoo.paths.base import ProbabilityPath
from flowzoo.registry import register

CAUSAL_FLAG = "--model.backbone.init_args.causal=true"


def causal_incompatibility(parts) -> tuple[str, str] | None:
    """Refuse anything but the autoregressive path and a causal backbone (the ar objective and sampler share it)."""
    if not isinstance(parts["path"], AutoregressivePath):
        return "path", "next-token prediction reads a start token from the autoregressive path (--model.path=autoregressive)"
    backbone = parts.get("backbone")
    if backbone is not None and not getattr(backbone, "causal", False):
        return "backbone", f"next-token prediction needs a causal backbone ({CAUSAL_FLAG})"
    return None


@register("path", "autoregressive")
class AutoregressivePath(ProbabilityPath):
    """p(x) = prod_i p(x_i | BOS, x_<i): the input alphabet is the vocabulary plus a start token BOS = V.

    Position i of the (causal) network reads [BOS, x_0, ..., x_{L-2}]_i and predicts x_i, so the first
    token is predicted from BOS alone (its learned unconditional law) and the network never sees time.
    """

    state = "discrete"
    extra_tokens = 1  # BOS, id = vocab_size
    mean_denoiser = False

    def bos_id(self, vocab_size: int) -> int:
        return vocab_size

    def shift_right(self, x1: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Network input for ids x1 (B, L): [BOS, x1[:, :-1]] (B, L)."""
        bos = torch.full_like(x1[:, :1], self.bos_id(vocab_size))
        return torch.cat([bos, x1[:, :-1]], dim=1)

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        """The decoding start: one BOS per sequence (B, 1)."""
        return torch.full((batch, 1), self.bos_id(vocab_size), dtype=torch.long, device=device)

    def sample(self, x1, t, vocab_size, generator=None):
        raise NotImplementedError("the autoregressive path has no noisy states; train it with --model.objective=ar")

    def velocity(self, x, denoised, t):
        raise NotImplementedError("the autoregressive path has no ODE; sample it with --model.sampler=ar")
