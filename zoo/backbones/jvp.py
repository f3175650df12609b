"""Forward-mode derivatives of a trunk, segment by segment, with activation checkpointing.

``torch.func.jvp`` under autograd keeps the activations of the primal *and* the tangent computation of
every layer for the backward pass. :func:`jvp_segment` instead runs one segment (a transformer block)
as (y, y') = jvp(f, (x, c), (x', c')) without a graph, keeps only its inputs (x, x', c, c'), and in the
backward pass re-runs that one jvp with autograd to get the vector-Jacobian product of (y, y') with
respect to the inputs and the segment's parameters. The gradient is exact; the memory of a depth-K
trunk's jvp falls from K segments' activations to their inputs plus one segment's activations, for the
cost of one more jvp of each segment.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from flowzoo.backbones.base import plain_attention


class _CheckpointedJvp(torch.autograd.Function):
    """apply(fn, n, *primals, *tangents, *params) -> (y, y'); fn(*primals) -> y (one tensor)."""

    @staticmethod
    def forward(ctx, fn, n, *args):
        primals, tangents = args[:n], args[n:2 * n]
        ctx.fn, ctx.n = fn, n
        ctx.params = args[2 * n:]
        ctx.autocast = _autocast_state(primals[0].device.type)
        ctx.rng = _RngState(primals[0].device)
        ctx.save_for_backward(*primals, *tangents)
        with torch.no_grad(), plain_attention(), ctx.rng.restored():
            y, y_dot = torch.func.jvp(fn, tuple(primals), tuple(tangents))
        return y, y_dot

    @staticmethod
    def backward(ctx, grad_y, grad_y_dot):
        saved = ctx.saved_tensors
        inputs = [x.detach().requires_grad_(ctx.needs_input_grad[2 + i]) for i, x in enumerate(saved)]
        n = ctx.n
        with torch.enable_grad(), plain_attention(), ctx.rng.restored(), torch.autocast(**ctx.autocast):
            y, y_dot = torch.func.jvp(ctx.fn, tuple(inputs[:n]), tuple(inputs[n:]))
        wanted = [(i, x) for i, x in enumerate([*inputs, *ctx.params]) if ctx.needs_input_grad[2 + i]]
        outputs, grads_out = [], []
        for out, g in ((y, grad_y), (y_dot, grad_y_dot)):
            if g is not None and out.requires_grad:
                outputs.append(out)
                grads_out.append(g)
        grads = [None] * (2 * n + len(ctx.params))
        if wanted and outputs:
            found = torch.autograd.grad(outputs, [x for _, x in wanted], grads_out, allow_unused=True)
            for (i, _), g in zip(wanted, found):
                grads[i] = g
        return (None, None, *grads)


def _autocast_state(device_type: str) -> dict:
    enabled = torch.is_autocast_enabled(device_type)
    return {"device_type": device_type, "enabled": enabled, "dtype": torch.get_autocast_dtype(device_type)}


class _RngState:
    """The generator state at the forward pass, restored for the recomputation (dropout draws the same masks)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device
        self.first = True

    @contextlib.contextmanager
    def restored(self):
        if self.first:  # the forward pass itself runs on the live generator
            self.first = False
            yield
            return
        devices = [self.device] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield


def jvp_segment(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor] = (),
    checkpoint: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), d/de fn(primals + e tangents)) with gradients to primals, tangents and ``params``.

    ``checkpoint``: keep only the inputs and recompute the jvp in the backward pass (``params`` must then
    list every tensor ``fn`` reads that needs a gradient, e.g. the segment's parameters); otherwise a plain
    ``torch.func.jvp`` under autograd. Attention runs on its plain path (forward-mode AD needs it).
    """
    if len(primals) != len(tangents):
        raise ValueError(f"jvp_segment needs one tangent per primal, got {len(primals)} primals and {len(tangents)} tangents")
    if not checkpoint or not torch.is_grad_enabled():
        with plain_attention():
            return torch.func.jvp(fn, tuple(primals), tuple(tangents))
    return _CheckpointedJvp.apply(fn, len(primals), *primals, *tangents, *params)
