"""The sampler contract and the shared decoding step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from flowzoo.registry import Component

if TYPE_CHECKING:
    from flowzoo.module import FlowLM

DECODES = ("argmax", "sample")


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (B, L) int64
    nfe: int  # network evaluations for the whole batch
    prediction: torch.Tensor | None = None  # (B, L, V) the per-position prediction decoded, where one was formed


class Sampler(Component):
    """Generates ``num_samples`` sequences of ``length`` tokens from ``model``."""

    def sample(self, model: "FlowLM", num_samples: int, length: int, generator: torch.Generator | None = None) -> SampleOutput:
        raise NotImplementedError


def check_decode(decode: str, temperature: float) -> None:
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}; choices: {', '.join(DECODES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def decode_tokens(prediction: torch.Tensor, decode: str, temperature: float, generator=None) -> torch.Tensor:
    """Tokens (B, L) from a per-position prediction (B, L, V): its argmax, or a draw from p^(1/T) in float64."""
    if decode == "argmax":
        return prediction.argmax(-1)
    probs = prediction.double().clamp_min(0)
    if temperature != 1.0:  # p^(1/T), normalised in log space so small T cannot underflow
        probs = torch.softmax(probs.clamp_min(1e-300).log() / temperature, dim=-1)
    flat = torch.multinomial(probs.flatten(0, 1), 1, generator=generator)
    return flat.view(prediction.shape[:2])
