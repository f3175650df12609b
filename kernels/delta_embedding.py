"""The embedded prediction delta W_in^T, with delta = softmax(cap(h W_out^T + b)), chunked over V.

``softmax_embedding``: softmax(cap(h W_out^T + b)) W_in^T, the delta term of a landing point
X = a x + b delta embedded as a (x W_in^T) + b softmax_embedding(h), computed from hidden states h and
chunked over V like attention with one query per row: neither the logits nor the probabilities exist as
(R, V) tensors. The samplers' flow-map and Euler steps on embeddings (``flowzoo.state.EmbeddedState``) and the
stop-gradient teachers of psd / lsd use it. Forward-only; with autograd on it runs the differentiable
dense reference.
"""

from __future__ import annotations

import torch

from flowzoo.kernels.cross_entropy import _logits_chunk, _lse_reference, chunk_columns
from flowzoo.kernels.dispatch import triton_available, use_triton
from flowzoo.kernels.embedding import kernel_blocks

if triton_available():
    import triton
    import triton.language as tl

    from flowzoo.kernels.cross_entropy import _logits_tile, _lse_triton

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
