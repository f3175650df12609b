"""Noisy simplex embedding without the (B, L, V) state: (a x0 + b onehot(ids) + c delta) W^T.

W is the input projection as ``nn.Linear(V, D).weight``, shape (D, V). The noise term x0 W^T is
computed tile by tile over V with x0 drawn inside the kernel from a seed; the backward pass redraws
x0 to form dW = (a g)^T x0 instead of storing it. The one-hot term is a row gather b W[:, ids]^T;
the optional dense ``delta`` term (a flow-map landing point a x + c delta) is a plain matmul.
"""

from __future__ import annotations

import torch

from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.noise import NOISE_BLOCK, draw_seed, reference_noise_block

if triton_available():
    import triton
    import triton.language as tl

    from flowzoo.kernels.noise import normal_tile

    @triton.jit
    def _noise_proj_fwd_kernel(w_ptr, out_ptr, seed, R, V, D, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                               BLOCK_D: tl.constexpr):
        """out[r, d] = sum_v x0[r, v] W[d, v]; grid (row blocks, D blocks), loop over V tiles."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            noise = normal_tile(seed, rows, cols, V)  # (BR, BV)
            noise = tl.where(cols[None, :] < V, noise, 0.0)
            w = tl.load(w_ptr + ds[None, :].to(tl.int64) * V + cols[:, None],
                        mask=(cols[:, None] < V) & (ds[None, :] < D), other=0.0)  # (BV, BD) = W^T tile
            acc += tl.dot(noise, w.to(tl.float32))
        tl.store(out_ptr + rows[:, None] * D + ds[None, :], acc, mask=(rows[:, None] < R) & (ds[None, :] < D))

    @triton.jit
    def _noise_proj_bwd_kernel(g_ptr, dw_ptr, seed, R, V, D, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                               BLOCK_D: tl.constexpr):
        """dW[d, v] = sum_r g[r, d] x0[r, v]; grid (V blocks, D blocks), loop over row tiles, x0 redrawn."""
        cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_D, BLOCK_V), dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            noise = normal_tile(seed, rows, cols, V)  # (BR, BV)
            noise = tl.where(rows[:, None] < R, noise, 0.0)
            g = tl.load(g_ptr + rows[None, :] * D + ds[:, None], mask=(rows[None, :] < R) & (ds[:, None] < D),
                        other=0.0)  # (BD, BR) = g^T tile
            acc += tl.dot(g.to(tl.float32), noise)
        tl.store(dw_ptr + ds[:, None].to(tl.int64) * V + cols[None, :], acc,
                 mask=(ds[:, None] < D) & (cols[None, :] < V))


def kernel_blocks(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_V, BLOCK_D): GPU tiles on CUDA, the smallest tl.dot tiles in the CPU interpreter."""
    return (64, 64, 64) if device.type == "cuda" else (16, 16, 16)


def _noise_proj_triton(weight: torch.Tensor, seed: int, rows: int) -> torch.Tensor:
    D, V = weight.shape
    out = torch.empty(rows, D, device=weight.device, dtype=torch.float32)
    br, bv, bd = kernel_blocks(weight.device)
    grid = (triton.cdiv(rows, br), triton.cdiv(D, bd))
    _noise_proj_fwd_kernel[grid](weight.contiguous(), out, seed, rows, V, D, BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    return out


def _noise_proj_grad_triton(grad: torch.Tensor, seed: int, vocab_size: int) -> torch.Tensor:
    R, D = grad.shape
    dw = torch.empty(D, vocab_size, device=grad.device, dtype=torch.float32)
    br, bv, bd = kernel_blocks(grad.device)
    grid = (triton.cdiv(vocab_size, bv), triton.cdiv(D, bd))
    _noise_proj_bwd_kernel[grid](grad.contiguous().float(), dw, seed, R, vocab_size, D, BLOCK_R=br, BLOCK_V=bv,
                                 BLOCK_D=bd)
    return dw


def _noise_proj_reference(weight: torch.Tensor, seed: int, rows: int) -> torch.Tensor:
    """sum over NOISE_BLOCK column blocks of x0_k W_k^T; only one (rows, NOISE_BLOCK) block lives at a time."""
    D, V = weight.shape
    out = torch.zeros(rows, D, device=weight.device, dtype=torch.float32)
    for k, start in enumerate(range(0, V, NOISE_BLOCK)):
        w = weight[:, start:start + NOISE_BLOCK].float()
        out += reference_noise_block(seed, rows, k, w.shape[1], weight.device) @ w.t()
    return out


def _noise_proj_grad_reference(grad: torch.Tensor, seed: int, vocab_size: int) -> torch.Tensor:
    R, D = grad.shape
    dw = torch.empty(D, vocab_size, device=grad.device, dtype=torch.float32)
    g = grad.float().t()  # (D, R)
    for k, start in enumerate(range(0, vocab_size, NOISE_BLOCK)):
        width = min(NOISE_BLOCK, vocab_size - start)
        dw[:, start:start + width] = g @ reference_noise_block(seed, R, k, width, grad.device)
    return dw


class NoisyEmbedding(torch.autograd.Function):
    """a x0 W^T + b W[:, ids]^T for x0 ~ N(0, I) (rows, V) drawn from ``seed``.

    Backward redraws x0 and fills one dW buffer: dW = (a g)^T x0, then dW[:, ids] += (b g)^T in place;
    da = <g, x0 W^T> (the (rows, D) projection is saved), db = <g, W[:, ids]^T>.
    """

    @staticmethod
    def forward(ctx, weight, a, b, ids, seed: int, triton_backend: bool):
        fn = _noise_proj_triton if triton_backend else _noise_proj_reference
        proj = fn(weight, seed, ids.numel())  # (R, D)
        rows = weight.t()[ids].float()  # (R, D)
        ctx.save_for_backward(weight, a, b, ids, proj)
        ctx.seed, ctx.triton_backend = seed, triton_backend
        return a[:, None] * proj + b[:, None] * rows

    @staticmethod
    def backward(ctx, grad):
        weight, a, b, ids, proj = ctx.saved_tensors
        grad = grad.float()
        dw = da = db = None
        if ctx.needs_input_grad[0]:
            fn = _noise_proj_grad_triton if ctx.triton_backend else _noise_proj_grad_reference
            dw = fn(a[:, None] * grad, ctx.seed, weight.shape[1])  # (D, V)
            dw.index_add_(1, ids, (b[:, None] * grad).t())
            dw = dw.to(weight.dtype)
        if ctx.needs_input_grad[1]:
            da = (grad * proj).sum(-1)
        if ctx.needs_input_grad[2]:
            db = (grad * weight.t()[ids].float()).sum(-1)
        return dw, da, db, None, None, None


def _row_coefficient(value, shape: torch.Size, device) -> torch.Tensor:
    """A scalar, (B,) per-sequence or (B, L) per-token coefficient -> (B * L,) float."""
    value = torch.as_tensor(value, dtype=torch.float32, device=device)
    if value.dim() == 1 and len(shape) == 2:
        value = value[:, None]
    try:
        return value.expand(shape).reshape(-1)
    except RuntimeError:
        raise ValueError(f"coefficient of shape {tuple(value.shape)} does not broadcast to ids {tuple(shape)}") from None


def noisy_embedding(
    ids: torch.Tensor,
    weight: torch.Tensor,
    a,
    b,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    delta: torch.Tensor | None = None,
    c=None,
    noise: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """(a x0 + b onehot(ids) + c delta) W^T -> (B, L, D), x_t never materialised.

    ids (B, L) long; weight (D, V) as ``nn.Linear(V, D).weight``; a, b, c scalars, (B,) or (B, L).
    x0 ~ N(0, I) is drawn from ``seed`` (an int; drawn from ``generator`` if None). Use the same seed in
    two calls to embed the same x0 twice (e.g. x_s and a landing point a' x_s + c delta). ``noise``
    (B, L, V) replaces the seeded draw by an explicit x0 (reference path, for tests).
    ``backend`` = "triton" / "reference" overrides the dispatch (default: Triton on CUDA).
    Gradients flow to weight, a, b, c and delta.
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must have shape (B, L), got {tuple(ids.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (D, V), got {tuple(weight.shape)}")
    D, V = weight.shape
    shape, device = ids.shape, ids.device
    rows = ids.numel()
    a_r, b_r = _row_coefficient(a, shape, device), _row_coefficient(b, shape, device)
    if noise is not None:
        if noise.shape != (*shape, V):
            raise ValueError(f"noise must have shape {(*shape, V)}, got {tuple(noise.shape)}")
        noise_proj = noise.reshape(rows, V).float() @ weight.float().t()
    else:
        if seed is None:
            seed = draw_seed(generator)
        triton_backend = use_triton(weight) if backend is None else backend == "triton"
        out = NoisyEmbedding.apply(weight, a_r, b_r, ids.reshape(-1), int(seed), triton_backend)  # (R, D)
    if noise is not None:
        out = a_r[:, None] * noise_proj + b_r[:, None] * weight.t()[ids.reshape(-1)].float()
    if delta is not None:
        if delta.shape != (*shape, V):
            raise ValueError(f"delta must have shape {(*shape, V)}, got {tuple(delta.shape)}")
        c_r = _row_coefficient(1.0 if c is None else c, shape, device)
        out = out + c_r[:, None] * (delta.reshape(rows, V).to(weight.dtype) @ weight.t()).float()
    return out.view(*shape, D)


def noisy_embedding_reference(ids, weight, a, b, noise, delta=None, c=None) -> torch.Tensor:
    """Dense formula (a x0 + b onehot(ids) + c delta) W^T with an explicit x0 = ``noise`` (B, L, V)."""
    V = weight.shape[1]
    shape = ids.shape
    a_r = _row_coefficient(a, shape, ids.device).view(*shape, 1)
    b_r = _row_coefficient(b, shape, ids.device).view(*shape, 1)
    x = a_r * noise + b_r * torch.nn.functional.one_hot(ids, V).float()
    if delta is not None:
        x = x + _row_coefficient(1.0 if c is None else c, shape, ids.device).view(*shape, 1) * delta
    return x @ weight.float().t()
