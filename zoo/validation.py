"""Input checks that fail early with one clear message instead of a stack trace deep inside torch.

Shape and dtype checks are free. Value checks (range of times and ids) read the tensor, which on an
accelerator waits for the device; callers on the per-step training path pass ``values=on_host(x)``
so that they run on the CPU and are skipped on CUDA (public entry points check them everywhere).
"""

from __future__ import annotations

import torch


def on_host(x: torch.Tensor) -> bool:
    """Whether reading ``x``'s values is free (CPU): value checks on the training path run only then."""
    return x.device.type == "cpu"


def check_times(t: torch.Tensor | None, s: torch.Tensor | None = None, batch: int | None = None, values: bool = True) -> None:
    """Times must lie in [0, 1], one per sequence, and a source time ``s`` may not exceed ``t``."""
    if t is None and s is not None:
        raise ValueError("a source time s was given without a target time t")
    for name, value in (("t", t), ("s", s)):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"time {name} must be a tensor of shape ({batch if batch is not None else 'B'},), got {type(value).__name__}")
        if value.dim() != 1 or (batch is not None and value.shape[0] != batch):
            raise ValueError(f"time {name} must have shape ({batch if batch is not None else 'B'},), got {tuple(value.shape)}")
        if values and (not torch.isfinite(value).all() or (value < 0).any() or (value > 1).any()):
            raise ValueError(f"time {name} must lie in [0, 1]; got values in [{value.min().item():.4g}, {value.max().item():.4g}]")
    if values and s is not None and (s > t + 1e-6).any():
        raise ValueError("source time s must not exceed target time t (flow maps run forward, s <= t)")


def check_tokens(x1: torch.Tensor, vocab_size: int, values: bool = True) -> None:
    """Clean data must be integer token ids of shape (B, L) inside the vocabulary."""
    if not isinstance(x1, torch.Tensor):
        raise ValueError(f"tokens must be a tensor of integer ids of shape (B, L), got {type(x1).__name__}")
    if x1.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"tokens must be integer ids of shape (B, L), got dtype {x1.dtype}")
    if x1.dim() != 2:
        raise ValueError(f"tokens must have shape (B, L), got {tuple(x1.shape)}")
    if values and x1.numel() and (x1.min() < 0 or x1.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{x1.min().item()}, {x1.max().item()}]")


def check_state(x: torch.Tensor, vocab_size: int) -> None:
    """A continuous state on (or near) the simplex has shape (B, L, V)."""
    if x.dim() != 3 or x.shape[-1] != vocab_size:
        raise ValueError(f"state must have shape (B, L, {vocab_size}), got {tuple(x.shape)}")


def check_choice(value, choices, what: str, error: type[Exception] = ValueError, where: str = "") -> None:
    """``value`` must be one of ``choices``; else ``error`` names it and lists them: "[where: ]unknown <what> 'x';
    choices: a, b"."""
    if value not in choices:
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}unknown {what} {value!r}; choices: {', '.join(map(str, choices))}")
