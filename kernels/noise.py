"""Gaussian noise x0 ~ N(0, I) over a (rows, V) grid that kernels draw tile by tile and redraw in backward.

Triton: x0[r, v] = Philox-Box-Muller(seed, offset = r * V + v) (``tl.randn``), so any tile is
reproducible from (seed, rows, cols) alone. PyTorch reference: the columns are cut into blocks of
``NOISE_BLOCK`` and block k is ``torch.randn`` from a generator seeded with (seed, k); both laws are
i.i.d. N(0, 1), the two streams differ.
"""

from __future__ import annotations

import torch

from flowzoo.kernels.dispatch import triton_available

NOISE_BLOCK = 4096  # columns per reference noise block; chunked reference code must step by this
_GOLDEN = 0x9E3779B97F4A7C15


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A kernel seed in [0, 2^31) drawn from ``generator`` (or the global CPU generator)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))


def reference_noise_block(seed: int, rows: int, block: int, width: int, device, dtype=torch.float32) -> torch.Tensor:
    """Columns [block * NOISE_BLOCK, block * NOISE_BLOCK + width) of the reference noise: (rows, width)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * _GOLDEN + block) % (2**63 - 1))
    return torch.randn(rows, width, generator=gen, device=device, dtype=dtype)


def reference_noise(seed: int, rows: int, vocab_size: int, device, dtype=torch.float32) -> torch.Tensor:
    """The whole (rows, V) reference noise (for tests; the chunked code never builds it)."""
    blocks = []
    for k, start in enumerate(range(0, vocab_size, NOISE_BLOCK)):
        blocks.append(reference_noise_block(seed, rows, k, min(NOISE_BLOCK, vocab_size - start), device, dtype))
    return torch.cat(blocks, dim=1)


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def normal_tile(seed, rows, cols, V):
        """x0[rows, cols] ~ N(0, 1) from Philox(seed, r * V + c); rows (BR,), cols (BV,) -> (BR, BV)."""
        offsets = rows.to(tl.int64)[:, None] * V + cols[None, :]
        return tl.randn(seed, offsets)
