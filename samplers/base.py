"""The sampler contract and the shared decoding step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from flowzoo.registry import Component
from flowzoo.state import DECODES, check_decode, decode_tokens  # noqa: F401 (decoding is the state's, see flowzoo.state)

if TYPE_CHECKING:
    from flowzoo.module import FlowLM
    from flowzoo.prompt import Prompt


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (B, L) int64
    nfe: int  # network evaluations for the whole batch
    prediction: torch.Tensor | None = None  # (B, L, V) the per-position prediction decoded, where one was formed
    reward_evaluations: int = 0  # evaluations of a steering reward (lookaheads and the final score), all particles
    reward: torch.Tensor | None = None  # (B,) the steering reward of the returned samples, where one steered


class Sampler(Component):
    """Generates ``num_samples`` sequences of ``length`` tokens from ``model``."""

    def sample(
        self, model: "FlowLM", num_samples: int, length: int, generator: torch.Generator | None = None, prompt: "Prompt | None" = None
    ) -> SampleOutput:
        """``prompt`` (flowzoo.prompt.Prompt, already (num_samples, length)): its known positions come back unchanged."""
        raise NotImplementedError

    def prompt_refusal(self, prompt: "Prompt") -> str | None:
        """Why this sampler cannot serve ``prompt`` (None: it can)."""
        return None

    @property
    def renoises(self) -> bool:
        """Whether it swaps part of the state's implied noise for fresh noise between steps (churn,
        ``flowzoo.samplers.churn``), which assumes the Gaussian linear interpolant."""
        return False


class IterativeSampler(Sampler):
    """A sampler whose loop is a generator of its states: :meth:`iterate` yields (x, nfe) after every step (the
    denoising trajectory, for inspection), :meth:`sample` keeps the last."""

    def iterate(self, model, num_samples: int, length: int, generator=None, prompt=None) -> Iterator[tuple[torch.Tensor, int]]:
        """The states (num_samples, length) after each step, with the network evaluations so far."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        x, nfe = None, 0
        for x, nfe in self.iterate(model, num_samples, length, generator, prompt):
            pass
        return SampleOutput(x, nfe=nfe)
