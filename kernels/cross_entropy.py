"""Softmax cross-entropy fused with the output projection, chunked over V (logits never whole).

Per row r: z = cap(h W^T + b) with cap(z) = c tanh(z / c) (optional soft-cap), and
loss_r = sum_v T[r, v] (lse(z_r) - z[r, v]) = (sum_v T[r, v]) lse(z_r) - sum_v T[r, v] z[r, v],
for a target T that is one-hot ids, a dense soft distribution (R, V), or a teacher mixture
T = sum_k m_k softmax(cap(h_k W_k^T + b_k)) built tile by tile from teacher hidden states (K, R, D)
(so psd / distillation targets never exist as a (R, V) tensor either).
Backward: dz = g (sum_v T) softmax(z) - g T, times cap'(z) = 1 - (z / c)^2, recomputed tile by tile
from the saved lse: dh = dz W, dW = dz^T h, db = sum_r dz. Targets are constants (no gradient).

This module holds the kernels and the dense reference; the entry point :func:`linear_cross_entropy` is a
one-part :func:`~flowzoo.kernels.shared_head.shared_head_losses` (``flowzoo.kernels.shared_head``, which
builds on this module and on ``lagrangian_residual``; neither imports it back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowzoo.kernels.dispatch import triton_available
from flowzoo.kernels.embedding import kernel_blocks

CE_CHUNK = 8192  # at most this many vocabulary columns per step of the PyTorch reference
CE_BUDGET = 1 << 20  # ... and at most this many (row, column) entries per temporary (4 MB in float32)

IDS, SOFT, TEACHER, LSE_ONLY = 0, 1, 2, 3


@dataclass
class TeacherTarget:
    """T = sum_k mix[k] softmax(cap(hidden[k] W^T + b)): hidden (K, *rows, D), mix (K, *rows) or (K,).

    ``weight`` / ``bias`` default to the student's (detached): self-distillation with one network.
    """

    hidden: torch.Tensor
    mix: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, R, V, D, cap, HAS_BIAS: tl.constexpr, USE_CAP: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """cap(h[rows] W[cols]^T + b[cols]) -> (BR, BV); out-of-range entries hold finite junk."""
        acc = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            h = tl.load(h_ptr + rows[:, None] * D + ds[None, :], mask=(rows[:, None] < R) & (ds[None, :] < D), other=0.0)
            w = tl.load(w_ptr + cols[None, :].to(tl.int64) * D + ds[:, None],
                        mask=(cols[None, :] < V) & (ds[:, None] < D), other=0.0)  # (BD, BV) = W^T tile
            acc += tl.dot(h.to(tl.float32), w.to(tl.float32))
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
        if USE_CAP:
            acc = cap * (2.0 * tl.sigmoid(2.0 * acc / cap) - 1.0)  # c tanh(z / c)
        return acc

    @triton.jit
    def _target_tile(tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr, K, rows, cols, R, V, D, cap,
                     MODE: tl.constexpr, HAS_TBIAS: tl.constexpr, USE_CAP: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """T[rows, cols] (BR, BV) for the target mode; zero outside the valid range."""
        valid = (rows[:, None] < R) & (cols[None, :] < V)
        if MODE == 0:
            ids = tl.load(tgt_ptr + rows, mask=rows < R, other=-1)
            T = tl.where(cols[None, :] == ids[:, None], 1.0, 0.0)
        elif MODE == 1:
            T = tl.load(tgt_ptr + rows[:, None].to(tl.int64) * V + cols[None, :], mask=valid, other=0.0)
            T = T.to(tl.float32)
        else:
            T = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
            for k in range(K):
                zk = _logits_tile(th_ptr + k * R * D, tw_ptr, tb_ptr, rows, cols, R, V, D, cap, HAS_TBIAS, USE_CAP,
                                  BLOCK_R, BLOCK_V, BLOCK_D)
                lse_k = tl.load(tlse_ptr + k * R + rows, mask=rows < R, other=0.0)
                mix_k = tl.load(tmix_ptr + k * R + rows, mask=rows < R, other=0.0)
                T += mix_k[:, None] * tl.exp(zk - lse_k[:, None])
        return tl.where(valid, T, 0.0)

    @triton.jit
    def _lce_fwd_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr,
                        lse_ptr, loss_ptr, tsum_ptr, R, V, D, K, cap,
                        MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TBIAS: tl.constexpr, USE_CAP: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """Online lse over V tiles plus sum_v T z and sum_v T; grid (row blocks,). MODE 3: lse only."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BLOCK_R,), dtype=tl.float32)
        tz = tl.zeros((BLOCK_R,), dtype=tl.float32)
        ts = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, R, V, D, cap, HAS_BIAS, USE_CAP,
                             BLOCK_R, BLOCK_V, BLOCK_D)
            zm = tl.where(cols[None, :] < V, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(zm, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(zm - m_new[:, None]), axis=1)
            m = m_new
            if MODE != 3:
                T = _target_tile(tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr, K, rows, cols, R, V, D, cap,
                                 MODE, HAS_TBIAS, USE_CAP, BLOCK_R, BLOCK_V, BLOCK_D)
                tz += tl.sum(T * tl.where(cols[None, :] < V, z, 0.0), axis=1)
                ts += tl.sum(T, axis=1)
        lse = m + tl.log(s)
        tl.store(lse_ptr + rows, lse, mask=rows < R)
        if MODE != 3:
            tl.store(loss_ptr + rows, ts * lse - tz, mask=rows < R)
            tl.store(tsum_ptr + rows, ts, mask=rows < R)

    @triton.jit
    def _lce_dz_tile(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr,
                     lse_ptr, tsum_ptr, g_ptr, rows, cols, R, V, D, K, cap,
                     MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TBIAS: tl.constexpr, USE_CAP: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """dloss/dz_pre-cap for the tile: g (tsum softmax(z) - T) cap'(z); zero outside the valid range."""
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, R, V, D, cap, HAS_BIAS, USE_CAP, BLOCK_R, BLOCK_V, BLOCK_D)
        lse = tl.load(lse_ptr + rows, mask=rows < R, other=0.0)
        tsum = tl.load(tsum_ptr + rows, mask=rows < R, other=0.0)
        g = tl.load(g_ptr + rows, mask=rows < R, other=0.0)
        T = _target_tile(tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr, K, rows, cols, R, V, D, cap,
                         MODE, HAS_TBIAS, USE_CAP, BLOCK_R, BLOCK_V, BLOCK_D)
        dz = g[:, None] * (tsum[:, None] * tl.exp(z - lse[:, None]) - T)
        if USE_CAP:
            dz = dz * (1.0 - (z / cap) * (z / cap))
        return tl.where((rows[:, None] < R) & (cols[None, :] < V), dz, 0.0)

    @triton.jit
    def _lce_bwd_dh_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr,
                           lse_ptr, tsum_ptr, g_ptr, dh_ptr, R, V, D, K, cap,
                           MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TBIAS: tl.constexpr,
                           USE_CAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """dh[rows, ds] = sum_v dz[rows, v] W[v, ds]; grid (row blocks, D blocks)."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            dz = _lce_dz_tile(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr, lse_ptr,
                              tsum_ptr, g_ptr, rows, cols, R, V, D, K, cap, MODE, HAS_BIAS, HAS_TBIAS, USE_CAP,
                              BLOCK_R, BLOCK_V, BLOCK_D)
            w = tl.load(w_ptr + cols[:, None].to(tl.int64) * D + ds[None, :],
                        mask=(cols[:, None] < V) & (ds[None, :] < D), other=0.0)  # (BV, BD)
            acc += tl.dot(dz, w.to(tl.float32))
        tl.store(dh_ptr + rows[:, None] * D + ds[None, :], acc, mask=(rows[:, None] < R) & (ds[None, :] < D))

    @triton.jit
    def _lce_bwd_dw_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr,
                           lse_ptr, tsum_ptr, g_ptr, dw_ptr, db_ptr, R, V, D, K, cap,
                           MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TBIAS: tl.constexpr,
                           USE_CAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                           ACCUMULATE: tl.constexpr = False):
        """dW[cols, ds] = sum_r dz[r, cols] h[r, ds], db[cols] = sum_r dz[r, cols]; grid (V blocks, D blocks).

        ACCUMULATE adds to what dW and db hold (several losses sharing one weight gradient buffer)."""
        cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_V, BLOCK_D), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            dz = _lce_dz_tile(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tmix_ptr, tlse_ptr, lse_ptr,
                              tsum_ptr, g_ptr, rows, cols, R, V, D, K, cap, MODE, HAS_BIAS, HAS_TBIAS, USE_CAP,
                              BLOCK_R, BLOCK_V, BLOCK_D)
            h = tl.load(h_ptr + rows[:, None] * D + ds[None, :], mask=(rows[:, None] < R) & (ds[None, :] < D),
                        other=0.0)  # (BR, BD)
            acc += tl.dot(tl.trans(dz), h.to(tl.float32))
            dbias += tl.sum(dz, axis=0)
        wmask = (cols[:, None] < V) & (ds[None, :] < D)
        if ACCUMULATE:
            acc += tl.load(dw_ptr + cols[:, None].to(tl.int64) * D + ds[None, :], mask=wmask, other=0.0)
        tl.store(dw_ptr + cols[:, None].to(tl.int64) * D + ds[None, :], acc, mask=wmask)
        if HAS_BIAS:
            if tl.program_id(1) == 0:
                if ACCUMULATE:
                    dbias += tl.load(db_ptr + cols, mask=cols < V, other=0.0)
                tl.store(db_ptr + cols, dbias, mask=cols < V)


# ----------------------------------------------------------------------------------------------
# Target preparation shared by both backends
# ----------------------------------------------------------------------------------------------


@dataclass
class _Target:
    mode: int
    tensor: torch.Tensor | None = None  # ids (R,) or soft (R, V)
    hidden: torch.Tensor | None = None  # teacher (K, R, D)
    mix: torch.Tensor | None = None  # (K, R)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    lse: torch.Tensor | None = None  # teacher lse (K, R)


def _prepare_target(target, lead: torch.Size, weight, bias) -> _Target:
    R, V = lead.numel(), weight.shape[0]
    if isinstance(target, TeacherTarget):
        hidden = target.hidden.detach()
        K = hidden.shape[0]
        if hidden.shape[1:-1] != lead or hidden.shape[-1] != weight.shape[1]:
            raise ValueError(f"teacher hidden must have shape (K, {', '.join(map(str, lead))}, {weight.shape[1]}), "
                             f"got {tuple(hidden.shape)}")
        mix = torch.as_tensor(target.mix, dtype=torch.float32, device=hidden.device).detach()
        mix = mix.reshape(K, *([1] * len(lead))) if mix.dim() == 1 else mix
        mix = mix.expand(K, *lead).reshape(K, R).contiguous()
        tw = (target.weight if target.weight is not None else weight).detach()
        tb = target.bias if target.weight is not None else bias
        return _Target(TEACHER, hidden=hidden.reshape(K, R, -1).contiguous(), mix=mix, weight=tw.contiguous(),
                       bias=None if tb is None else tb.detach().contiguous())
    if not torch.is_tensor(target):
        raise ValueError(f"target must be ids, a soft distribution or a TeacherTarget, got {type(target).__name__}")
    if not target.is_floating_point():
        if target.shape != lead:
            raise ValueError(f"target ids must have shape {tuple(lead)}, got {tuple(target.shape)}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= V):
            raise ValueError(f"target ids must lie in [0, {V}), got range [{int(target.min())}, {int(target.max())}]")
        return _Target(IDS, tensor=target.reshape(R).long().contiguous())
    if target.shape != (*lead, V):
        raise ValueError(f"soft target must have shape {(*lead, V)}, got {tuple(target.shape)}")
    return _Target(SOFT, tensor=target.detach().reshape(R, V).contiguous())


# ----------------------------------------------------------------------------------------------
# PyTorch reference: the same chunked algorithm, CE_CHUNK columns at a time
# ----------------------------------------------------------------------------------------------


def chunk_columns(rows: int) -> int:
    """Columns per reference step: CE_CHUNK, fewer when rows * CE_CHUNK would exceed CE_BUDGET."""
    return max(1, min(CE_CHUNK, CE_BUDGET // max(rows, 1)))


def _logits_chunk(h, weight, bias, start, stop, cap):
    z = h @ weight[start:stop].float().t()  # (R, C)
    if bias is not None:
        z = z + bias[start:stop].float()
    return cap * torch.tanh(z / cap) if cap else z


def _lse_reference(h, weight, bias, cap) -> torch.Tensor:
    V = weight.shape[0]
    m = torch.full((h.shape[0],), float("-inf"), device=h.device)
    s = torch.zeros(h.shape[0], device=h.device)
    step = chunk_columns(h.shape[0])
    for start in range(0, V, step):
        z = _logits_chunk(h, weight, bias, start, start + step, cap)
        m_new = torch.maximum(m, z.max(dim=1).values)
        s = s * torch.exp(m - m_new) + torch.exp(z - m_new[:, None]).sum(dim=1)
        m = m_new
    return m + torch.log(s)


def _target_chunk(tgt: _Target, start, stop, cap) -> torch.Tensor:
    if tgt.mode == IDS:
        cols = torch.arange(start, stop, device=tgt.tensor.device)
        return (tgt.tensor[:, None] == cols[None, :]).float()
    if tgt.mode == SOFT:
        return tgt.tensor[:, start:stop].float()
    T = 0.0
    for k in range(tgt.hidden.shape[0]):
        zk = _logits_chunk(tgt.hidden[k].float(), tgt.weight, tgt.bias, start, stop, cap)
        T = T + tgt.mix[k][:, None] * torch.exp(zk - tgt.lse[k][:, None])
    return T


def _forward_reference(h, weight, bias, tgt: _Target, cap):
    V = weight.shape[0]
    m = torch.full((h.shape[0],), float("-inf"), device=h.device)
    s, tz, ts = (torch.zeros(h.shape[0], device=h.device) for _ in range(3))
    step = chunk_columns(h.shape[0])
    for start in range(0, V, step):
        stop = min(start + step, V)
        z = _logits_chunk(h, weight, bias, start, stop, cap)
        m_new = torch.maximum(m, z.max(dim=1).values)
        s = s * torch.exp(m - m_new) + torch.exp(z - m_new[:, None]).sum(dim=1)
        m = m_new
        T = _target_chunk(tgt, start, stop, cap)
        tz += (T * z).sum(dim=1)
        ts += T.sum(dim=1) if torch.is_tensor(T) else 0.0
    lse = m + torch.log(s)
    return lse, ts * lse - tz, ts


def _backward_reference(h, weight, bias, tgt: _Target, cap, lse, tsum, g, dw=None, db=None):
    """(dh, dW, db); with the float32 buffers ``dw`` (V, D) / ``db`` (V,) given, dW and db are added to them."""
    V = weight.shape[0]
    dh = torch.zeros_like(h)
    if dw is None:  # a fresh gradient; given buffers are added to
        dw = torch.zeros(weight.shape, device=h.device, dtype=torch.float32)
        db = torch.zeros(V, device=h.device, dtype=torch.float32) if bias is not None else None
    step = chunk_columns(h.shape[0])
    for start in range(0, V, step):
        stop = min(start + step, V)
        z = _logits_chunk(h, weight, bias, start, stop, cap)
        dz = g[:, None] * (tsum[:, None] * torch.exp(z - lse[:, None]) - _target_chunk(tgt, start, stop, cap))
        if cap:
            dz = dz * (1 - (z / cap) ** 2)
        dh += dz @ weight[start:stop].float()
        dw[start:stop].addmm_(dz.t(), h)
        if db is not None:
            db[start:stop] += dz.sum(dim=0)
    return dh, dw, db


# ----------------------------------------------------------------------------------------------
# Triton launchers
# ----------------------------------------------------------------------------------------------


def _launch_args(h, weight, bias, tgt: _Target):
    dummy = h
    return (
        h, weight, bias if bias is not None else dummy,
        tgt.tensor if tgt.tensor is not None else dummy,
        tgt.hidden if tgt.hidden is not None else dummy,
        tgt.weight if tgt.weight is not None else dummy,
        tgt.bias if tgt.bias is not None else dummy,
        tgt.mix if tgt.mix is not None else dummy,
        tgt.lse if tgt.lse is not None else dummy,
    )


def _lse_triton(h, weight, bias, cap) -> torch.Tensor:
    R, D = h.shape
    V = weight.shape[0]
    lse = torch.empty(R, device=h.device, dtype=torch.float32)
    br, bv, bd = kernel_blocks(h.device)
    d = h
    _lce_fwd_kernel[(triton.cdiv(R, br),)](
        h, weight, bias if bias is not None else d, d, d, d, d, d, d, lse, d, d, R, V, D, 0, float(cap or 1.0),
        MODE=LSE_ONLY, HAS_BIAS=bias is not None, HAS_TBIAS=False, USE_CAP=bool(cap),
        BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    return lse


def _flags(bias, tgt: _Target, cap) -> dict:
    return dict(MODE=tgt.mode, HAS_BIAS=bias is not None, HAS_TBIAS=tgt.bias is not None, USE_CAP=bool(cap))


def _forward_triton(h, weight, bias, tgt: _Target, cap):
    R, D = h.shape
    V = weight.shape[0]
    lse, loss, tsum = (torch.empty(R, device=h.device, dtype=torch.float32) for _ in range(3))
    br, bv, bd = kernel_blocks(h.device)
    K = 0 if tgt.hidden is None else tgt.hidden.shape[0]
    _lce_fwd_kernel[(triton.cdiv(R, br),)](
        *_launch_args(h, weight, bias, tgt), lse, loss, tsum, R, V, D, K, float(cap or 1.0),
        **_flags(bias, tgt, cap), BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    return lse, loss, tsum


def _backward_triton(h, weight, bias, tgt: _Target, cap, lse, tsum, g, dw=None, db=None):
    R, D = h.shape
    V = weight.shape[0]
    br, bv, bd = kernel_blocks(h.device)
    K = 0 if tgt.hidden is None else tgt.hidden.shape[0]
    args = _launch_args(h, weight, bias, tgt)
    flags = dict(**_flags(bias, tgt, cap), BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    g = g.contiguous().float()
    dh = torch.empty(R, D, device=h.device, dtype=torch.float32)
    _lce_bwd_dh_kernel[(triton.cdiv(R, br), triton.cdiv(D, bd))](
        *args, lse, tsum, g, dh, R, V, D, K, float(cap or 1.0), **flags)
    accumulate = dw is not None
    if not accumulate:
        dw = torch.empty(V, D, device=h.device, dtype=torch.float32)
        db = torch.empty(V, device=h.device, dtype=torch.float32) if bias is not None else None
    _lce_bwd_dw_kernel[(triton.cdiv(V, bv), triton.cdiv(D, bd))](
        *args, lse, tsum, g, dw, db if db is not None else dw, R, V, D, K, float(cap or 1.0), **flags,
        ACCUMULATE=accumulate)
    return dh, dw, db


def linear_argmax(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, softcap: float | None = None) -> torch.Tensor:
    """argmax_v cap(h W^T + b) per row (*rows) read in chunks of V, so no (rows, V) tensor exists; the first
    maximum wins, as torch.argmax. h (*rows, D); weight (V, D), bias (V,) as ``nn.Linear(D, V)``. (The softmax
    keeps the order, so this is also the argmax of the categorical head's prediction.)"""
    rows = h.reshape(-1, h.shape[-1]).float()
    best = torch.full((rows.shape[0],), float("-inf"), device=h.device)
    index = torch.zeros(rows.shape[0], dtype=torch.long, device=h.device)
    step, V = chunk_columns(rows.shape[0]), weight.shape[0]
    for start in range(0, V, step):
        value, arg = _logits_chunk(rows, weight, bias, start, start + step, softcap).max(dim=-1)
        better = value > best
        best, index = torch.where(better, value, best), torch.where(better, arg + start, index)
    return index.view(h.shape[:-1])


def linear_cross_entropy_reference(h, weight, bias, target, *, softcap=None) -> torch.Tensor:
    """Dense formula with the logits materialised: -sum_v T log softmax(cap(h W^T + b)) per row."""
    z = h.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    cap = (lambda x: softcap * torch.tanh(x / softcap)) if softcap else (lambda x: x)
    z = cap(z)
    logp = torch.log_softmax(z, dim=-1)
    if isinstance(target, TeacherTarget):
        tw = target.weight if target.weight is not None else weight
        tb = target.bias if target.weight is not None else bias
        zt = target.hidden.float() @ tw.float().t()
        zt = cap(zt + tb.float() if tb is not None else zt)
        mix = torch.as_tensor(target.mix, dtype=torch.float32)
        mix = mix.reshape(-1, *([1] * (zt.dim() - 1))) if mix.dim() == 1 else mix[..., None]
        target = (mix * torch.softmax(zt, dim=-1)).sum(0).detach()
    if not target.is_floating_point():
        return -logp.gather(-1, target[..., None]).squeeze(-1)
    return -(target * logp).sum(-1)
