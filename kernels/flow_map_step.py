"""Flow-map landing points fused with the next input embedding.

``flow_map_step_embedding`` (sampling): X = alpha x + beta softmax(logits) and E = X W_in^T in one pass
over V (X is the sampler's next state, so it is written; softmax(logits) is never a tensor).
``softmax_embedding`` (training targets): softmax(cap(h W_out^T + b)) W_in^T, the delta term of a
landing point computed from hidden states h, chunked over V like attention with one query per row:
neither the logits nor the probabilities exist as (R, V) tensors. Both are forward-only (no_grad
use: sampling, stop-gradient teachers); with autograd on they run the differentiable dense reference.
"""

from __future__ import annotations

import torch

from flowzoo.kernels.cross_entropy import _logits_chunk, _lse_reference, chunk_columns
from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.embedding import _row_coefficient, kernel_blocks

if triton_available():
    import triton
    import triton.language as tl

    from flowzoo.kernels.cross_entropy import _logits_tile, _lse_triton

    @triton.jit
    def _flow_map_step_kernel(x_ptr, z_ptr, alpha_ptr, beta_ptr, w_ptr, out_x_ptr, out_e_ptr, R, V, E,
                              BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_E: tl.constexpr):
        """X = alpha x + beta softmax(z) (stored by the first E block) and X W^T; grid (row blocks, E blocks)."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        es = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        rmask = rows < R
        base = rows[:, None].to(tl.int64) * V
        m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):  # pass 1: online logsumexp of the logits
            cols = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(z_ptr + base + cols[None, :], mask=rmask[:, None] & (cols[None, :] < V), other=float("-inf"))
            z = tl.where(rmask[:, None], z.to(tl.float32), 0.0)
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
            m = m_new
        lse = m + tl.log(s)
        alpha = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)
        beta = tl.load(beta_ptr + rows, mask=rmask, other=0.0)
        acc = tl.zeros((BLOCK_R, BLOCK_E), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):  # pass 2: landing point and its projection
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = rmask[:, None] & (cols[None, :] < V)
            z = tl.load(z_ptr + base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            X = alpha[:, None] * x + beta[:, None] * tl.exp(z - lse[:, None])
            X = tl.where(mask, X, 0.0)
            if tl.program_id(1) == 0:
                tl.store(out_x_ptr + base + cols[None, :], X, mask=mask)
            w = tl.load(w_ptr + es[None, :].to(tl.int64) * V + cols[:, None],
                        mask=(cols[:, None] < V) & (es[None, :] < E), other=0.0)  # (BV, BE) = W^T tile
            acc += tl.dot(X, w.to(tl.float32))
        tl.store(out_e_ptr + rows[:, None] * E + es[None, :], acc, mask=rmask[:, None] & (es[None, :] < E))

    @triton.jit
    def _softmax_embedding_kernel(h_ptr, wo_ptr, bo_ptr, lse_ptr, wi_ptr, out_ptr, R, V, D, E, cap,
                                  HAS_BIAS: tl.constexpr, USE_CAP: tl.constexpr, BLOCK_R: tl.constexpr,
                                  BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr):
        """out = softmax(cap(h W_out^T + b)) W_in^T from the row lse; grid (row blocks, E blocks)."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        es = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        lse = tl.load(lse_ptr + rows, mask=rows < R, other=0.0)
        acc = tl.zeros((BLOCK_R, BLOCK_E), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = _logits_tile(h_ptr, wo_ptr, bo_ptr, rows, cols, R, V, D, cap, HAS_BIAS, USE_CAP,
                             BLOCK_R, BLOCK_V, BLOCK_D)
            p = tl.where((rows[:, None] < R) & (cols[None, :] < V), tl.exp(z - lse[:, None]), 0.0)
            w = tl.load(wi_ptr + es[None, :].to(tl.int64) * V + cols[:, None],
                        mask=(cols[:, None] < V) & (es[None, :] < E), other=0.0)  # (BV, BE) = W_in^T tile
            acc += tl.dot(p, w.to(tl.float32))
        tl.store(out_ptr + rows[:, None] * E + es[None, :], acc, mask=(rows[:, None] < R) & (es[None, :] < E))


def _needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def flow_map_step_reference(x, logits, alpha, beta, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense X = alpha x + beta softmax(logits) and X W^T (alpha, beta broadcast per row)."""
    shape = x.shape[:-1]
    a = _row_coefficient(alpha, shape, x.device).view(*shape, 1)
    b = _row_coefficient(beta, shape, x.device).view(*shape, 1)
    X = a * x.float() + b * torch.softmax(logits.float(), dim=-1)
    return X, X @ weight.float().t()


def flow_map_step_embedding(x, logits, alpha, beta, weight, *, backend: str | None = None):
    """(X, X W^T) for the landing point X = alpha x + beta softmax(logits), fused on CUDA.

    x, logits (B, L, V); alpha, beta scalars, (B,) or (B, L) (e.g. (1-t)/(1-s) and (t-s)/(1-s));
    weight (D, V) as ``nn.Linear(V, D).weight``. Returns X (B, L, V) float and E (B, L, D) float.
    """
    if x.shape != logits.shape or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"x {tuple(x.shape)}, logits {tuple(logits.shape)} and weight (D, V) "
                         f"{tuple(weight.shape)} disagree")
    triton_backend = use_triton(x) if backend is None else backend == "triton"
    if not triton_backend or _needs_autograd(x, logits, weight):
        return flow_map_step_reference(x, logits, alpha, beta, weight)
    shape, V, E = x.shape[:-1], x.shape[-1], weight.shape[0]
    R = shape.numel()
    a = _row_coefficient(alpha, shape, x.device).contiguous()
    b = _row_coefficient(beta, shape, x.device).contiguous()
    out_x = torch.empty(R, V, device=x.device, dtype=torch.float32)
    out_e = torch.empty(R, E, device=x.device, dtype=torch.float32)
    br, bv, be = kernel_blocks(x.device)
    grid = (triton.cdiv(R, br), triton.cdiv(E, be))
    _flow_map_step_kernel[grid](x.reshape(R, V).contiguous(), logits.reshape(R, V).contiguous(), a, b,
                                weight.contiguous(), out_x, out_e, R, V, E, BLOCK_R=br, BLOCK_V=bv, BLOCK_E=be)
    return out_x.view(*shape, V), out_e.view(*shape, E)


def softmax_embedding_reference(h, out_weight, out_bias, in_weight, *, softcap=None) -> torch.Tensor:
    """softmax(cap(h W_out^T + b)) W_in^T, chunked over V (no (R, V) tensor) unless autograd needs the graph."""
    shape = h.shape[:-1]
    hf = h.reshape(-1, h.shape[-1]).float()
    if _needs_autograd(h, out_weight, out_bias, in_weight):
        z = _logits_chunk(hf, out_weight, out_bias, 0, out_weight.shape[0], softcap)
        return (torch.softmax(z, dim=-1) @ in_weight.float().t()).view(*shape, -1)
    lse = _lse_reference(hf, out_weight, out_bias, softcap)
    out = torch.zeros(hf.shape[0], in_weight.shape[0], device=h.device)
    step = chunk_columns(hf.shape[0])
    for start in range(0, out_weight.shape[0], step):
        p = torch.exp(_logits_chunk(hf, out_weight, out_bias, start, start + step, softcap) - lse[:, None])
        out += p @ in_weight[:, start:start + step].float().t()
    return out.view(*shape, -1)


def softmax_embedding(h, out_weight, out_bias, in_weight, *, softcap=None, backend: str | None = None):
    """softmax(cap(h W_out^T + b)) W_in^T -> (*rows, D_in) without (R, V) logits or probabilities.

    h (*rows, D); out_weight (V, D), out_bias (V,) or None as ``nn.Linear(D, V)``; in_weight (D_in, V) as
    ``nn.Linear(V, D_in).weight``. The delta term of a landing point a x + c delta for a stop-gradient
    teacher; forward-only on the kernel path.
    """
    if out_weight.shape[0] != in_weight.shape[1] or h.shape[-1] != out_weight.shape[1]:
        raise ValueError(f"h {tuple(h.shape)}, out_weight (V, D) {tuple(out_weight.shape)} and in_weight (D_in, V) "
                         f"{tuple(in_weight.shape)} disagree")
    triton_backend = use_triton(h) if backend is None else backend == "triton"
    if not triton_backend or _needs_autograd(h, out_weight, out_bias, in_weight):
        return softmax_embedding_reference(h, out_weight, out_bias, in_weight, softcap=softcap)
    shape, D = h.shape[:-1], h.shape[-1]
    V, E = out_weight.shape[0], in_weight.shape[0]
    hf = h.reshape(-1, D).contiguous()
    R = hf.shape[0]
    wo, wi = out_weight.contiguous(), in_weight.contiguous()
    bo = out_bias.contiguous() if out_bias is not None else None
    lse = _lse_triton(hf, wo, bo, softcap)
    out = torch.empty(R, E, device=h.device, dtype=torch.float32)
    br, bv, bd = kernel_blocks(h.device)
    grid = (triton.cdiv(R, br), triton.cdiv(E, bd))
    _softmax_embedding_kernel[grid](hf, wo, bo if bo is not None else hf, lse, wi, out, R, V, D, E,
                                    float(softcap or 1.0), HAS_BIAS=bo is not None, USE_CAP=bool(softcap),
                                    BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd, BLOCK_E=bd)
    return out.view(*shape, E)
