"""The Lagrangian (LSD) residual loss fused with the output projection, chunked over V.

Per row, with z = h W^T + b (student logits at (s, t)), z' = ht W^T + b (stop-gradient teacher at the
landing point X_{s,t}(x_s), diagonal time t) and the tangent zd = hd W^T = dz/dt (hd = dh/dt from
forward-mode AD of the trunk):

    delta = softmax(z),  d/dt delta = delta (zd - mu),  mu = sum_v delta_v zd_v,  D = softmax(z')
    r = delta + kappa d/dt delta - D,   loss = sum_v r_v^2,   kappa = (1-t)(t-s)/(1-s),

which is (1-t) d/dt X_{s,t} + X - sg D_t(X) on the linear path (objectives/lsd.py). With
w = 1 + kappa (zd - mu), A = sum_v 2 r delta and S = sum_v 2 r delta w (row scalars saved by the
forward pass), the gradient per tile is
    dL/dz = g delta (2 r w - S - kappa (zd - mu) A),   dL/dzd = g kappa delta (2 r - A),
then dh = dz W, dhd = dzd W, dW = dz^T h + dzd^T hd, db = sum_r dz. The teacher gets no gradient.

``stop_tangent`` (MeanFlow-style semi-gradient): r = delta + kappa sg[d/dt delta] - sg D, the same value, with the
gradient through delta only: dL/dz = g delta (2 r - A), dL/dzd = 0 (the tangent then needs no autograd graph).

This module holds the kernels and the dense reference; the entry point :func:`lsd_residual_loss` is a one-part
:func:`~flowzoo.kernels.shared_head.shared_head_losses` (``flowzoo.kernels.shared_head``).
"""

from __future__ import annotations

import torch

from flowzoo.kernels.cross_entropy import _logits_chunk, chunk_columns
from flowzoo.kernels.dispatch import triton_available
from flowzoo.kernels.embedding import _row_coefficient, kernel_blocks

if triton_available():
    import triton
    import triton.language as tl

    from flowzoo.kernels.cross_entropy import _logits_tile

    @triton.jit
    def _lsd_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, rows, cols, R, V, D, HAS_BIAS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, R, V, D, 1.0, HAS_BIAS, False, BLOCK_R, BLOCK_V, BLOCK_D)
        zd = _logits_tile(hd_ptr, w_ptr, b_ptr, rows, cols, R, V, D, 1.0, False, False, BLOCK_R, BLOCK_V, BLOCK_D)
        zt = _logits_tile(ht_ptr, w_ptr, b_ptr, rows, cols, R, V, D, 1.0, HAS_BIAS, False, BLOCK_R, BLOCK_V, BLOCK_D)
        return z, zd, zt

    @triton.jit
    def _lsd_fwd_kernel(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, loss_ptr, R, V, D,
                        HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
        """Pass 1: lse(z), mu, lse(z'); pass 2: loss, A, S. stats (5, R) = lse, mu, lse', A, S."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BLOCK_R,), dtype=tl.float32)
        q = tl.zeros((BLOCK_R,), dtype=tl.float32)
        mt = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
        st = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            valid = cols[None, :] < V
            z, zd, zt = _lsd_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, rows, cols, R, V, D, HAS_BIAS,
                                   BLOCK_R, BLOCK_V, BLOCK_D)
            z = tl.where(valid, z, float("-inf"))
            zt = tl.where(valid, zt, float("-inf"))
            zd = tl.where(valid, zd, 0.0)
            m_new = tl.maximum(m, tl.max(z, axis=1))
            scale = tl.exp(m - m_new)
            e = tl.exp(z - m_new[:, None])
            s = s * scale + tl.sum(e, axis=1)
            q = q * scale + tl.sum(e * zd, axis=1)
            m = m_new
            mt_new = tl.maximum(mt, tl.max(zt, axis=1))
            st = st * tl.exp(mt - mt_new) + tl.sum(tl.exp(zt - mt_new[:, None]), axis=1)
            mt = mt_new
        lse = m + tl.log(s)
        mu = q / s
        lset = mt + tl.log(st)
        kappa = tl.load(kappa_ptr + rows, mask=rmask, other=0.0)
        loss = tl.zeros((BLOCK_R,), dtype=tl.float32)
        a_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
        s_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            valid = (cols[None, :] < V) & rmask[:, None]
            z, zd, zt = _lsd_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, rows, cols, R, V, D, HAS_BIAS,
                                   BLOCK_R, BLOCK_V, BLOCK_D)
            delta = tl.exp(z - lse[:, None])
            w = 1.0 + kappa[:, None] * (zd - mu[:, None])
            r = tl.where(valid, delta * w - tl.exp(zt - lset[:, None]), 0.0)
            delta = tl.where(valid, delta, 0.0)
            loss += tl.sum(r * r, axis=1)
            a_sum += tl.sum(2.0 * r * delta, axis=1)
            s_sum += tl.sum(2.0 * r * delta * w, axis=1)
        tl.store(loss_ptr + rows, loss, mask=rmask)
        tl.store(stats_ptr + rows, lse, mask=rmask)
        tl.store(stats_ptr + R + rows, mu, mask=rmask)
        tl.store(stats_ptr + 2 * R + rows, lset, mask=rmask)
        tl.store(stats_ptr + 3 * R + rows, a_sum, mask=rmask)
        tl.store(stats_ptr + 4 * R + rows, s_sum, mask=rmask)

    @triton.jit
    def _lsd_grad_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, g_ptr, rows, cols, R, V, D,
                        HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                        STOP_TANGENT: tl.constexpr):
        """(dL/dz, dL/dzd) for the tile, zero outside the valid range."""
        rmask = rows < R
        z, zd, zt = _lsd_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, rows, cols, R, V, D, HAS_BIAS,
                               BLOCK_R, BLOCK_V, BLOCK_D)
        lse = tl.load(stats_ptr + rows, mask=rmask, other=0.0)
        mu = tl.load(stats_ptr + R + rows, mask=rmask, other=0.0)
        lset = tl.load(stats_ptr + 2 * R + rows, mask=rmask, other=0.0)
        a_sum = tl.load(stats_ptr + 3 * R + rows, mask=rmask, other=0.0)
        s_sum = tl.load(stats_ptr + 4 * R + rows, mask=rmask, other=0.0)
        kappa = tl.load(kappa_ptr + rows, mask=rmask, other=0.0)
        g = tl.load(g_ptr + rows, mask=rmask, other=0.0)
        delta = tl.exp(z - lse[:, None])
        w = 1.0 + kappa[:, None] * (zd - mu[:, None])
        r = delta * w - tl.exp(zt - lset[:, None])
        if STOP_TANGENT:
            dz = g[:, None] * delta * (2.0 * r - a_sum[:, None])
            dzd = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
        else:
            dz = g[:, None] * delta * (2.0 * r * w - s_sum[:, None] - kappa[:, None] * (zd - mu[:, None]) * a_sum[:, None])
            dzd = g[:, None] * kappa[:, None] * delta * (2.0 * r - a_sum[:, None])
        valid = rmask[:, None] & (cols[None, :] < V)
        return tl.where(valid, dz, 0.0), tl.where(valid, dzd, 0.0)

    @triton.jit
    def _lsd_bwd_dh_kernel(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, g_ptr, dh_ptr, dhd_ptr,
                           R, V, D, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                           BLOCK_D: tl.constexpr, STOP_TANGENT: tl.constexpr = False):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        acc_d = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            dz, dzd = _lsd_grad_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, g_ptr, rows, cols,
                                      R, V, D, HAS_BIAS, BLOCK_R, BLOCK_V, BLOCK_D, STOP_TANGENT)
            w = tl.load(w_ptr + cols[:, None].to(tl.int64) * D + ds[None, :],
                        mask=(cols[:, None] < V) & (ds[None, :] < D), other=0.0).to(tl.float32)  # (BV, BD)
            acc += tl.dot(dz, w)
            acc_d += tl.dot(dzd, w)
        mask = (rows[:, None] < R) & (ds[None, :] < D)
        tl.store(dh_ptr + rows[:, None] * D + ds[None, :], acc, mask=mask)
        tl.store(dhd_ptr + rows[:, None] * D + ds[None, :], acc_d, mask=mask)

    @triton.jit
    def _lsd_bwd_dw_kernel(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, g_ptr, dw_ptr, db_ptr,
                           R, V, D, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                           BLOCK_D: tl.constexpr, ACCUMULATE: tl.constexpr = False, STOP_TANGENT: tl.constexpr = False):
        """dW, db for the V block; ACCUMULATE adds to what dW and db hold (a shared weight gradient buffer)."""
        cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_V, BLOCK_D), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_V,), dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            dz, dzd = _lsd_grad_tiles(h_ptr, hd_ptr, ht_ptr, w_ptr, b_ptr, kappa_ptr, stats_ptr, g_ptr, rows, cols,
                                      R, V, D, HAS_BIAS, BLOCK_R, BLOCK_V, BLOCK_D, STOP_TANGENT)
            mask = (rows[:, None] < R) & (ds[None, :] < D)
            h = tl.load(h_ptr + rows[:, None] * D + ds[None, :], mask=mask, other=0.0).to(tl.float32)
            hd = tl.load(hd_ptr + rows[:, None] * D + ds[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += tl.dot(tl.trans(dz), h) + tl.dot(tl.trans(dzd), hd)
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


# ---------------------------------------------------------------------------------------------- reference


def _chunks(h, hd, ht, weight, bias, start, stop):
    return (_logits_chunk(h, weight, bias, start, stop, None), _logits_chunk(hd, weight, None, start, stop, None),
            _logits_chunk(ht, weight, bias, start, stop, None))


def _forward_reference(h, hd, ht, weight, bias, kappa):
    R, V = h.shape[0], weight.shape[0]
    m = torch.full((R,), float("-inf"), device=h.device)
    mt = m.clone()
    s, q, st = (torch.zeros(R, device=h.device) for _ in range(3))
    step = chunk_columns(R)
    for start in range(0, V, step):
        z, zd, zt = _chunks(h, hd, ht, weight, bias, start, start + step)
        m_new = torch.maximum(m, z.max(1).values)
        scale, e = torch.exp(m - m_new), torch.exp(z - m_new[:, None])
        s, q, m = s * scale + e.sum(1), q * scale + (e * zd).sum(1), m_new
        mt_new = torch.maximum(mt, zt.max(1).values)
        st, mt = st * torch.exp(mt - mt_new) + torch.exp(zt - mt_new[:, None]).sum(1), mt_new
    lse, mu, lset = m + torch.log(s), q / s, mt + torch.log(st)
    loss, a_sum, s_sum = (torch.zeros(R, device=h.device) for _ in range(3))
    for start in range(0, V, step):
        z, zd, zt = _chunks(h, hd, ht, weight, bias, start, start + step)
        delta = torch.exp(z - lse[:, None])
        w = 1 + kappa[:, None] * (zd - mu[:, None])
        r = delta * w - torch.exp(zt - lset[:, None])
        loss += (r * r).sum(1)
        a_sum += (2 * r * delta).sum(1)
        s_sum += (2 * r * delta * w).sum(1)
    return loss, torch.stack([lse, mu, lset, a_sum, s_sum])


def _backward_reference(h, hd, ht, weight, bias, kappa, stats, g, dw=None, db=None, stop_tangent: bool = False):
    """(dh, dh_dot, dW, db); with the float32 buffers ``dw`` (V, D) / ``db`` (V,) given, dW and db are added to them."""
    lse, mu, lset, a_sum, s_sum = stats
    R, V = h.shape[0], weight.shape[0]
    dh, dhd = torch.zeros_like(h), torch.zeros_like(hd)
    if dw is None:  # a fresh gradient; given buffers are added to
        dw = torch.zeros(weight.shape, device=h.device)
        db = torch.zeros(V, device=h.device) if bias is not None else None
    step = chunk_columns(R)
    k = kappa[:, None]
    for start in range(0, V, step):
        stop = min(start + step, V)
        z, zd, zt = _chunks(h, hd, ht, weight, bias, start, stop)
        delta = torch.exp(z - lse[:, None])
        w = 1 + k * (zd - mu[:, None])
        r = delta * w - torch.exp(zt - lset[:, None])
        if stop_tangent:
            dz = g[:, None] * delta * (2 * r - a_sum[:, None])
            dzd = torch.zeros_like(dz)
        else:
            dz = g[:, None] * delta * (2 * r * w - s_sum[:, None] - k * (zd - mu[:, None]) * a_sum[:, None])
            dzd = g[:, None] * k * delta * (2 * r - a_sum[:, None])
        wc = weight[start:stop].float()
        dh += dz @ wc
        dhd += dzd @ wc
        dw[start:stop].addmm_(dz.t(), h).addmm_(dzd.t(), hd)
        if db is not None:
            db[start:stop] += dz.sum(0)
    return dh, dhd, dw, db


# ---------------------------------------------------------------------------------------------- triton


def _forward_triton(h, hd, ht, weight, bias, kappa):
    R, D = h.shape
    V = weight.shape[0]
    loss = torch.empty(R, device=h.device, dtype=torch.float32)
    stats = torch.empty(5, R, device=h.device, dtype=torch.float32)
    br, bv, bd = kernel_blocks(h.device)
    _lsd_fwd_kernel[(triton.cdiv(R, br),)](h, hd, ht, weight, bias if bias is not None else h, kappa, stats, loss,
                                           R, V, D, HAS_BIAS=bias is not None, BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    return loss, stats


def _backward_triton(h, hd, ht, weight, bias, kappa, stats, g, dw=None, db=None, stop_tangent: bool = False):
    R, D = h.shape
    V = weight.shape[0]
    br, bv, bd = kernel_blocks(h.device)
    g = g.contiguous().float()
    dh = torch.empty(R, D, device=h.device, dtype=torch.float32)
    dhd = torch.empty_like(dh)
    flags = dict(HAS_BIAS=bias is not None, BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd, STOP_TANGENT=stop_tangent)
    b = bias if bias is not None else h
    _lsd_bwd_dh_kernel[(triton.cdiv(R, br), triton.cdiv(D, bd))](h, hd, ht, weight, b, kappa, stats, g, dh, dhd,
                                                                 R, V, D, **flags)
    accumulate = dw is not None
    if not accumulate:
        dw = torch.empty(V, D, device=h.device, dtype=torch.float32)
        db = torch.empty(V, device=h.device, dtype=torch.float32) if bias is not None else None
    _lsd_bwd_dw_kernel[(triton.cdiv(V, bv), triton.cdiv(D, bd))](h, hd, ht, weight, b, kappa, stats, g, dw,
                                                                 db if db is not None else dw, R, V, D, **flags,
                                                                 ACCUMULATE=accumulate)
    return dh, dhd, dw, db


def lsd_residual_loss_reference(h, h_dot, h_teacher, weight, bias, kappa, stop_tangent: bool = False) -> torch.Tensor:
    """Dense formula with (R, V) logits, tangent logits and softmaxes (``stop_tangent``: d/dt delta detached)."""
    z = h.float() @ weight.float().t() + (bias.float() if bias is not None else 0.0)
    zd = h_dot.float() @ weight.float().t()
    with torch.no_grad():
        zt = h_teacher.float() @ weight.float().t() + (bias.float() if bias is not None else 0.0)
        D = torch.softmax(zt, -1)
    delta = torch.softmax(z, -1)
    ddelta = delta * (zd - (delta * zd).sum(-1, keepdim=True))
    if stop_tangent:
        ddelta = ddelta.detach()
    k = _row_coefficient(kappa, h.shape[:-1], h.device).view(*h.shape[:-1], 1)
    return ((delta + k * ddelta - D) ** 2).sum(-1)
