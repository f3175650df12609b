"""Fused interpolant x_t = a * x0 + b * onehot(x1) with x0 ~ N(0, I) drawn inside the kernel.

a and b are per-sequence coefficients (B,); the result is (B, L, V). On CUDA the noise is
generated tile by tile from a Philox seed, so x0 is never a separate tensor.
"""

from __future__ import annotations

import torch

from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.noise import draw_seed, reference_noise

if triton_available():
    import triton
    import triton.language as tl

    from flowzoo.kernels.noise import normal_tile

    @triton.jit
    def _interpolant_kernel(x1_ptr, a_ptr, b_ptr, out_ptr, seed, L, V, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)  # one (batch, position) row per program
        seq = row // L
        token = tl.load(x1_ptr + row)
        a = tl.load(a_ptr + seq)
        b = tl.load(b_ptr + seq)
        rows = tl.full((1,), 0, tl.int64) + row
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < V
            noise = normal_tile(seed, rows, cols, V)  # (1, BLOCK_V), offsets row * V + col as in every kernel
            value = a * noise + tl.where(cols[None, :] == token, b, 0.0)
            tl.store(out_ptr + row.to(tl.int64) * V + cols[None, :], value, mask=mask[None, :])


def _coefficients(x1: torch.Tensor, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    B = x1.shape[0]
    a = torch.as_tensor(a, dtype=torch.float32, device=x1.device).expand(B).contiguous()
    b = torch.as_tensor(b, dtype=torch.float32, device=x1.device).expand(B).contiguous()
    return a, b


def interpolant_reference(x1, a, b, vocab_size: int, noise: torch.Tensor | None = None, generator=None):
    """PyTorch reference: a x0 + b onehot(x1); x0 is ``noise`` if given, else drawn with ``generator``."""
    a, b = _coefficients(x1, a, b)
    if noise is None:
        noise = torch.randn(*x1.shape, vocab_size, generator=generator, device=x1.device)
    onehot = torch.nn.functional.one_hot(x1.long(), vocab_size).to(noise.dtype)
    return a[:, None, None] * noise + b[:, None, None] * onehot  # (B, L, V)


def interpolant_triton(x1, a, b, vocab_size: int, seed: int, block_v: int = 1024):
    """Triton kernel: the same law as the reference, noise from Philox(seed, row * V + col)."""
    a, b = _coefficients(x1, a, b)
    B, L = x1.shape
    out = torch.empty(B, L, vocab_size, device=x1.device, dtype=torch.float32)
    block = min(block_v, triton.next_power_of_2(vocab_size))
    _interpolant_kernel[(B * L,)](x1.contiguous().long(), a, b, out, seed, L, vocab_size, BLOCK_V=block)
    return out


def interpolant(x1, a, b, vocab_size: int, generator=None):
    """x_t = a x0 + b onehot(x1), dispatched to Triton on CUDA and to the reference elsewhere."""
    if use_triton(x1):
        return interpolant_triton(x1, a, b, vocab_size, draw_seed(generator))
    return interpolant_reference(x1, a, b, vocab_size, generator=generator)


def seeded_noise(shape, vocab_size: int, seed: int, device, triton_backend: bool) -> torch.Tensor:
    """The dense x0 (*shape, V) that the kernels draw for ``seed`` on the chosen backend (tests, losses
    that need x_t itself); rows are numbered in row-major order over ``shape``."""
    rows = int(torch.Size(shape).numel())
    if triton_backend:
        ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
        return interpolant_triton(ids.view(1, rows), 1.0, 0.0, vocab_size, seed).view(*shape, vocab_size)
    return reference_noise(seed, rows, vocab_size, device).view(*shape, vocab_size)
