"""What is known before sampling: a prompt (a prefix) or a sequence with holes, and how samplers hold it.

A :class:`Prompt` is ``known`` ids (B, L) plus a boolean ``mask`` (B, L) of the known positions (B may be 1:
one prompt for every sample). Every sampler returns the known positions unchanged; the unknown ones are
generated conditionally (docs/conditional.md has each method's equation):

* masked diffusion (MDLM): the known ids are given unmasked at every step and never resampled (SUBS);
* autoregressive: a prefix is read through the key/value cache, then the rest is drawn; holes are refused;
* continuous paths (flow, flow map, Dirichlet): :class:`HeldState` wraps the sampler's state. With
  ``hold="clean"`` the known positions enter the network as their clean one-hot onehot(x^l) at every step
  (the embedding W_in[:, x^l] on the embedded state); with ``hold="path"`` they follow the path's exact
  value for a clean token, x_t^l = (1 - t) x_0^l + t onehot(x^l) on the linear path, reached by replacing the
  prediction at the known positions with onehot(x^l) before each step (X_{s,t} keeps a clean token on its
  conditional path: (1-t)/(1-s) x_s + (t-s)/(1-s) onehot = (1-t) x_0 + t onehot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from flowzoo.errors import PromptError
from flowzoo.validation import check_choice

HOLDS = ("clean", "path")
HOLE_MARKER = "[...]"  # the hole of ``flowzoo sample --infill``: each marker becomes --hole-length generated tokens


@dataclass(frozen=True)
class Prompt:
    """Known ids (B, L) and the boolean mask (B, L) of the known positions; B = 1 serves every sample.

    ``hold`` chooses how continuous samplers present the known positions: ``"clean"`` (their one-hot at every
    time) or ``"path"`` (the path's exact value x_t for a clean token; at t = 0 that is pure noise)."""

    known: torch.Tensor
    mask: torch.Tensor
    hold: str = "clean"

    def __post_init__(self) -> None:
        known, mask = torch.as_tensor(self.known), torch.as_tensor(self.mask)
        if known.dim() == 1:
            known = known[None]
        if mask.dim() == 1:
            mask = mask[None]
        if known.dim() != 2 or known.shape != mask.shape:
            raise PromptError(f"a prompt's known ids and mask must both have shape (B, L), got {tuple(known.shape)} and {tuple(mask.shape)}")
        if known.is_floating_point() or mask.dtype != torch.bool:
            raise PromptError(f"a prompt needs integer ids and a boolean mask, got {known.dtype} and {mask.dtype}")
        check_choice(self.hold, HOLDS, "hold", PromptError)
        object.__setattr__(self, "known", torch.where(mask, known.long(), torch.zeros_like(known.long())))
        object.__setattr__(self, "mask", mask)

    # --- building
    @classmethod
    def prefix(cls, ids: Sequence[int] | torch.Tensor, length: int, hold: str = "clean") -> "Prompt":
        """The first len(ids) of ``length`` positions known (ids (K,) or (B, K)), the rest generated."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        K = ids.shape[1]
        if K > length:
            raise PromptError(f"the prompt has {K} tokens but the sequence has only {length}; shorten the prompt or pass a longer --length")
        if K == 0:
            raise PromptError("the prompt is empty")
        known = torch.zeros(ids.shape[0], length, dtype=torch.long)
        known[:, :K] = ids
        mask = torch.zeros(ids.shape[0], length, dtype=torch.bool)
        mask[:, :K] = True
        return cls(known, mask, hold)

    @classmethod
    def infill(cls, segments: Sequence[Sequence[int]], hole_length: int, length: int, hold: str = "clean") -> "Prompt":
        """Known segments with ``hole_length`` generated positions between consecutive ones; positions after the
        last segment (up to ``length``) are generated too. ``segments`` are id lists; at least two (one hole)."""
        if len(segments) < 2:
            raise PromptError(f"an infill prompt needs a hole: at least two known segments around {HOLE_MARKER!r}")
        if hole_length < 1:
            raise PromptError(f"the hole length must be at least 1, got {hole_length}")
        total = sum(len(s) for s in segments) + hole_length * (len(segments) - 1)
        if total > length:
            raise PromptError(f"the infill prompt spans {total} positions (segments plus {len(segments) - 1} holes of "
                              f"{hole_length}) but the sequence has only {length}; pass a longer --length")
        known = torch.zeros(1, length, dtype=torch.long)
        mask = torch.zeros(1, length, dtype=torch.bool)
        at = 0
        for i, segment in enumerate(segments):
            seg = torch.as_tensor(list(segment), dtype=torch.long)
            known[0, at:at + len(seg)] = seg
            mask[0, at:at + len(seg)] = True
            at += len(seg) + (hole_length if i + 1 < len(segments) else 0)
        return cls(known, mask, hold)

    # --- reading
    @property
    def is_prefix(self) -> bool:
        """Every row knows a prefix of one common length K >= 1 and nothing after it."""
        K = int(self.mask[0].sum())
        expected = torch.zeros_like(self.mask[0])
        expected[:K] = True
        return K > 0 and bool((self.mask == expected).all())

    @property
    def prefix_length(self) -> int:
        return int(self.mask[0].sum())

    def expand(self, num_samples: int, length: int, vocab_size: int, device=None) -> "Prompt":
        """The prompt as (num_samples, length) tensors on ``device``, checked against the model's vocabulary."""
        B, L = self.known.shape
        if L != length:
            raise PromptError(f"the prompt spans {L} positions but the sequence has {length}"
                              + ("; shorten the prompt or pass a longer --length" if L > length else ""))
        if B not in (1, num_samples):
            raise PromptError(f"the prompt has {B} rows; give one row, or one per sample ({num_samples})")
        if not self.mask.any(1).all():
            raise PromptError("a prompt row knows no position; sample unconditionally instead")
        if self.mask.all(1).any():
            raise PromptError("a prompt row knows every position: nothing is left to generate")
        ids = self.known[self.mask]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise PromptError(f"prompt ids must lie in [0, {vocab_size}), got {int(ids.min())} .. {int(ids.max())}")
        known = self.known.expand(num_samples, L).to(device)
        mask = self.mask.expand(num_samples, L).to(device)
        return Prompt(known, mask, self.hold)

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, L) with the known positions written in."""
        return torch.where(self.mask, self.known, tokens)

    def onehot(self, dim: int, dtype=torch.float32) -> torch.Tensor:
        """onehot(known) (B, L, dim)."""
        return F.one_hot(self.known, dim).to(dtype)


def as_prompt(prompt, length: int, tokenizer=None) -> Prompt:
    """A :class:`Prompt` from a Prompt, a prefix of ids ((K,) or (B, K)), or text (encoded with ``tokenizer``)."""
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        if tokenizer is None:
            raise PromptError("a text prompt needs the model's tokenizer; pass token ids or a Prompt instead")
        encoded = tokenizer.encode(prompt)
        return Prompt.prefix(list(getattr(encoded, "ids", encoded)), length)  # a tokenizers Encoding, or ids
    return Prompt.prefix(prompt, length)


class KnownRows:
    """The known positions of a block of rows as a state presents them: clean ids (B, L) and the boolean ``mask``
    (B, L) of the known positions (None: nothing known).

    :meth:`hold` puts the known positions of a state tensor at their clean point, onehot(x^l) on a dense state
    (B, L, V) and W_in[:, x^l] on an embedded one (B, L, D) (``state.clean``); :meth:`mean` averages a per-token
    loss over the unknown positions only. With no mask both are the plain operations (the same floating-point ops).
    """

    def __init__(self, state, ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.state, self.ids, self.mask = state, ids, mask
        self._clean: dict[tuple[torch.dtype, bool], torch.Tensor] = {}  # by dtype and whether it carries a gradient

    def hold(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, V) or (B, L, D) with the known positions at their clean point (x itself when nothing is known)."""
        if self.mask is None:
            return x
        key = (x.dtype, torch.is_grad_enabled())
        if key not in self._clean:
            self._clean[key] = self.state.clean(self.ids, x)
        return torch.where(self.mask[..., None], self._clean[key], x)

    def mean(self, loss: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of a per-token loss (B, L), optionally weighted per row (B,), over the unknown positions."""
        return unknown_mean(loss, self.mask, weight)


class HeldState:
    """A sampler's state (dense (B, L, V) or embedded (B, L, D), flowzoo.state) with the prompt's positions held.

    ``predict`` presents the known positions to the network (``hold="clean"``: their one-hot, at every step);
    ``in_state`` and ``euler_step`` replace the prediction there by onehot(x^l), so a step keeps them on the
    path's conditional trajectory (exact on the linear path); ``decode`` writes the known ids into the tokens.
    Every other operation is the wrapped state's.
    """

    def __init__(self, state, prompt: Prompt) -> None:
        self.state, self.prompt = state, prompt
        self.model = state.model
        self.known = KnownRows(state, prompt.known, prompt.mask)

    def __getattr__(self, name):
        return getattr(self.state, name)

    def hold(self, x: torch.Tensor) -> torch.Tensor:
        """x with the known positions at their clean point: onehot(x) (B, L, V), or W_in[:, x] (B, L, D)."""
        return self.known.hold(x)

    def predict(self, x, t, s=None, self_cond=None):
        if self.prompt.hold == "clean":
            x = self.hold(x)
        return self.state.predict(x, t, s) if self_cond is None else self.state.predict(x, t, s, self_cond=self_cond)

    def in_state(self, prediction):
        return self.hold(self.state.in_state(prediction))

    def euler_step(self, x, prediction, t, t_next):
        if self.state.embedded:  # the linear path's Euler step is its flow map, linear in the state
            return self.model.path.flow_map(x, self.in_state(prediction), t, t_next)
        return self.state.euler_step(x, self.hold(prediction), t, t_next)

    def decode(self, prediction, decode, temperature, generator=None):
        tokens, decoded = self.state.decode(prediction, decode, temperature, generator)
        if decoded is not None:
            decoded = self.hold(decoded)
        return self.prompt.apply(tokens), decoded


def held(state, prompt: Prompt | None):
    """``state`` itself without a prompt, else a :class:`HeldState`."""
    return state if prompt is None else HeldState(state, prompt)


# --- training for conditioning (``condition_share`` of the objectives) -----------------------------------------


def check_condition_share(share: float) -> float:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"condition_share must lie in [0, 1], got {share}")
    return float(share)


def condition_mask(x1: torch.Tensor, share: float, generator=None) -> torch.Tensor:
    """Known positions (B, L) for training: a share ``share`` of the rows knows a clean prefix of K ~ U{1..L-1}
    tokens (half of those rows) or everything but one hole [a, a + n) with n ~ U{1..L-1} (the other half); the
    other rows know nothing. Every row keeps at least one unknown position."""
    B, L = x1.shape
    device = x1.device
    if share <= 0 or L < 2:
        return torch.zeros(B, L, dtype=torch.bool, device=device)
    draw = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    chosen = draw(B) < share
    infill = draw(B) < 0.5
    pos = torch.arange(L, device=device)[None]  # (1, L)
    K = 1 + (draw(B) * (L - 1)).long()  # prefix length, 1..L-1
    n = 1 + (draw(B) * (L - 1)).long()  # hole length, 1..L-1
    a = (draw(B) * (L - n + 1)).long()  # hole start, 0..L-n
    prefix = pos < K[:, None]
    hole = (pos >= a[:, None]) & (pos < (a + n)[:, None])
    known = torch.where(infill[:, None], ~hole, prefix)
    return known & chosen[:, None]


class ConditionShare:
    """Mixin of the objectives that train for prompts (flow_matching, the flow-map objectives, distill):
    ``condition_share`` of the rows get clean known positions (:func:`condition_mask`), the objective presents
    them at their clean point wherever its network or teacher reads a state (``state.noisy(x1, t, known)``,
    :meth:`KnownRows.hold`) and averages its losses over the unknown positions (:meth:`KnownRows.mean`)."""

    condition_share: float = 0.0

    def set_condition_share(self, share: float) -> None:
        self.condition_share = check_condition_share(share)

    def known_positions(self, x1: torch.Tensor) -> torch.Tensor | None:
        """The known positions (B, L) of this training batch, or None with ``condition_share`` = 0 (no random draw:
        the objective is then exactly the unconditional one) and in evaluation (``eval()``: validation losses are
        the unconditional objective's, comparable with those of a model trained without prompts)."""
        if self.condition_share <= 0 or not getattr(self, "training", True):
            return None
        return condition_mask(x1, self.condition_share)


def unknown_mean(loss: torch.Tensor, known: torch.Tensor | None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of a per-token loss (B, L), optionally weighted per row (B,), over the unknown positions only
    (the plain mean when ``known`` is None, or when nothing is known)."""
    if weight is not None:
        loss = loss * weight[:, None]
    if known is None:
        return loss.mean()
    unknown = (~known).to(loss.dtype)
    return (loss * unknown).sum() / unknown.sum().clamp_min(1.0)
