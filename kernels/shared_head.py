"""Several losses through one output projection W_out with one weight gradient buffer.

An objective whose batch splits into parts with different losses on the same head (a flow map's diagonal
cross-entropy and its map loss) would call :func:`linear_cross_entropy` / :func:`lsd_residual_loss` once per
part; autograd then gets one (V, D) gradient of W_out per call and sums them out of place, so two or three
(V, D) tensors live at once. :func:`shared_head_losses` runs the parts in one autograd node whose backward
adds every part's dW (and db) into one float32 buffer: the step holds one weight gradient, as MDLM's does.

    losses = shared_head_losses(weight, bias, [CrossEntropyPart(h_diag, ids), LagrangianPart(h, h_dot, h_t, kappa)])

Each part dispatches like its own kernel (Triton on CUDA, the chunked reference elsewhere).
:func:`linear_cross_entropy` and :func:`lsd_residual_loss` are this node with one part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowzoo.kernels import cross_entropy as ce
from flowzoo.kernels import lagrangian_residual as residual
from flowzoo.kernels.dispatch import use_triton
from flowzoo.kernels.embedding import _row_coefficient


@dataclass
class CrossEntropyPart:
    """Per-row CE of softmax(cap(h W^T + b)) against ids / a soft target / a :class:`TeacherTarget`; h (*rows, D)."""

    h: torch.Tensor
    target: object
    softcap: float | None = None


@dataclass
class LagrangianPart:
    """Per-row sum_v (delta + kappa d/dt delta - sg D)^2 from (h, dh/dt, h_teacher) (*rows, D); see lsd_residual_loss."""

    h: torch.Tensor
    h_dot: torch.Tensor
    h_teacher: torch.Tensor
    kappa: object
    stop_tangent: bool = False  # the d/dt delta term as a constant (no gradient to h_dot or through it)


class _Prepared:
    """A part with its inputs flattened to rows and its forward statistics (what its backward needs)."""

    def __init__(self, part, weight, bias, triton_backend: bool) -> None:
        self.kind = "ce" if isinstance(part, CrossEntropyPart) else "lsd"
        self.lead = part.h.shape[:-1]
        D = part.h.shape[-1]
        prep = (lambda x: x.contiguous()) if triton_backend else (lambda x: x.float().contiguous())
        if self.kind == "ce":
            if part.softcap is not None and part.softcap <= 0:
                raise ValueError(f"softcap must be positive, got {part.softcap}")
            self.tgt = ce._prepare_target(part.target, self.lead, weight, bias)
            self.cap = part.softcap
            self.inputs = [part.h.reshape(-1, D)]  # tensors that get gradients
        else:
            if not (part.h.shape == part.h_dot.shape == part.h_teacher.shape):
                raise ValueError(f"h {tuple(part.h.shape)}, h_dot {tuple(part.h_dot.shape)} and h_teacher "
                                 f"{tuple(part.h_teacher.shape)} disagree")
            self.kappa = _row_coefficient(part.kappa, self.lead, part.h.device).detach().contiguous()
            self.teacher = prep(part.h_teacher.detach().reshape(-1, D))
            self.stop_tangent = part.stop_tangent
            self.inputs = [part.h.reshape(-1, D), part.h_dot.reshape(-1, D)]
        self.prep = prep

    def forward(self, flat, weight, bias, triton_backend: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss (R,), the tensors its backward needs: saved with ctx.save_for_backward by the caller)."""
        self.dtypes = [x.dtype for x in flat]
        xs = [self.prep(x) for x in flat]
        if self.kind == "ce":
            if self.tgt.mode == ce.TEACHER:
                lse_fn = ce._lse_triton if triton_backend else (lambda *a: ce._lse_reference(a[0].float(), *a[1:]))
                self.tgt.lse = torch.stack([lse_fn(self.tgt.hidden[k], self.tgt.weight, self.tgt.bias, self.cap)
                                            for k in range(self.tgt.hidden.shape[0])])
            fwd = ce._forward_triton if triton_backend else ce._forward_reference
            lse, loss, tsum = fwd(xs[0], weight, bias, self.tgt, self.cap)
            return loss, [xs[0], lse, tsum]
        fwd = residual._forward_triton if triton_backend else residual._forward_reference
        teacher, self.teacher = self.teacher, None  # saved through ctx like the inputs
        loss, stats = fwd(xs[0], xs[1], teacher, weight, bias, self.kappa)
        return loss, [xs[0], xs[1], teacher, stats]

    def backward(self, saved, g, weight, bias, dw, db, triton_backend: bool):
        """(gradients of the part's inputs, dW, db): dW and db are added to ``dw`` / ``db``, or fresh when None."""
        if self.kind == "ce":
            h, lse, tsum = saved
            bwd = ce._backward_triton if triton_backend else ce._backward_reference
            dh, dw, db = bwd(h, weight, bias, self.tgt, self.cap, lse, tsum, g.float(), dw, db)
            grads = [dh]
        else:
            h, hd, teacher, stats = saved
            bwd = residual._backward_triton if triton_backend else residual._backward_reference
            dh, dhd, dw, db = bwd(h, hd, teacher, weight, bias, self.kappa, stats, g.float(), dw, db,
                                  stop_tangent=self.stop_tangent)
            grads = [dh, dhd]
        return [grad.to(dtype) for grad, dtype in zip(grads, self.dtypes)], dw, db


class SharedHeadLosses(torch.autograd.Function):
    """Per-row losses of every part; backward: one dW (V, D) and db (V,) for all of them, plus each part's dh."""

    @staticmethod
    def forward(ctx, weight, bias, prepared, triton_backend: bool, *flat):
        w = weight.contiguous()
        losses, saved, counts, i = [], [], [], 0
        for part in prepared:
            n = len(part.inputs)
            loss, keep = part.forward(flat[i:i + n], w, bias, triton_backend)
            losses.append(loss)
            saved += keep
            counts.append(len(keep))
            i += n
        ctx.save_for_backward(w, bias, *saved)
        ctx.prepared, ctx.counts, ctx.triton_backend = prepared, counts, triton_backend
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return tuple(losses)

    @staticmethod
    def backward(ctx, *grads):
        w, bias, *saved = ctx.saved_tensors
        dw = db = None  # the first part writes dW / db, the others add to them
        flat_grads, i = [], 0
        for part, n, g in zip(ctx.prepared, ctx.counts, grads):
            if g is None:
                g = torch.zeros(part.lead.numel(), device=w.device)
            part_grads, dw, db = part.backward(saved[i:i + n], g, w, bias, dw, db, ctx.triton_backend)
            flat_grads += part_grads
            i += n
        wdt, bdt = ctx.dtypes
        return (dw.to(wdt), None if db is None else db.to(bdt), None, None, *flat_grads)


def shared_head_losses(weight: torch.Tensor, bias: torch.Tensor | None, parts: list, *,
                       backend: str | None = None) -> list[torch.Tensor]:
    """The per-row loss (*rows) of each part, computed through W_out (V, D) / b (V,) with one gradient buffer.

    parts: :class:`CrossEntropyPart` and :class:`LagrangianPart`, each with its own rows. Values and
    gradients equal those of separate :func:`linear_cross_entropy` / :func:`lsd_residual_loss` calls.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (V, D), got {tuple(weight.shape)}")
    if not parts:
        raise ValueError("shared_head_losses needs at least one part")
    for part in parts:
        if not isinstance(part, (CrossEntropyPart, LagrangianPart)):
            raise ValueError(f"parts must be CrossEntropyPart or LagrangianPart, got {type(part).__name__}")
        if part.h.shape[-1] != weight.shape[1]:
            raise ValueError(f"h (..., D) and weight (V, D) disagree: {tuple(part.h.shape)} vs {tuple(weight.shape)}")
    triton_backend = use_triton(parts[0].h) if backend is None else backend == "triton"
    prepared = [_Prepared(part, weight, bias, triton_backend) for part in parts]
    flat = [x for part in prepared for x in part.inputs]
    losses = SharedHeadLosses.apply(weight, bias, prepared, triton_backend, *flat)
    return [loss.view(part.lead) for loss, part in zip(losses, prepared)]


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target,
    *,
    softcap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-token CE of softmax(cap(h W^T + b)) against ``target`` without materialising the logits.

    h (*rows, D); weight (V, D) and bias (V,) as ``nn.Linear(D, V)``; target: ids (*rows) long, a soft
    distribution (*rows, V), or a :class:`TeacherTarget`. Returns the loss per row, shape (*rows).
    ``softcap`` c applies z -> c tanh(z / c) to the logits. ``backend`` overrides the dispatch.
    """
    if h.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"h (..., D) and weight (V, D) disagree: {tuple(h.shape)} vs {tuple(weight.shape)}")
    return shared_head_losses(weight, bias, [CrossEntropyPart(h, target, softcap)], backend=backend)[0]


def lsd_residual_loss(h, h_dot, h_teacher, weight, bias, kappa, *, stop_tangent: bool = False,
                      backend: str | None = None) -> torch.Tensor:
    """Per-token sum_v (delta + kappa d/dt delta - sg D_t(X))^2 without any (B, L, V) tensor.

    h, h_dot, h_teacher (*rows, D): the student's final hidden state at (s, t), its t-derivative (jvp
    tangent), and the teacher's hidden state at the landing point (diagonal t; detached). weight (V, D)
    and bias (V,) as ``nn.Linear(D, V)``; kappa = (1-t)(t-s)/(1-s), a scalar, (B,) or (*rows).
    Returns (*rows). Gradients flow to h, h_dot, weight and bias; with ``stop_tangent`` the d/dt delta term is a
    constant (MeanFlow-style semi-gradient: no gradient to h_dot, none through the tangent term).
    """
    if not (h.shape == h_dot.shape == h_teacher.shape) or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"h {tuple(h.shape)}, h_dot {tuple(h_dot.shape)}, h_teacher {tuple(h_teacher.shape)} and "
                         f"weight (V, D) {tuple(weight.shape)} disagree")
    part = LagrangianPart(h, h_dot, h_teacher, kappa, stop_tangent=stop_tangent)
    return shared_head_losses(weight, bias, [part], backend=backend)[0]
