"""flowzoo.backbones.jvp: the checkpointed forward-mode derivative has the gradients of a plain jvp."""

from __future__ import annotations

import pytest
import torch

from flowzoo.backbones.base import plain_attention
from flowzoo.backbones.dit import DiT
from flowzoo.backbones.jvp import jvp_segment


def dit(dropout=0.0):
    torch.manual_seed(0)
    model = DiT(width=32, depth=3, heads=4, cond_dim=16, dropout=dropout).bind(20, 20)
    with torch.no_grad():  # random weights everywhere (adaLN-zero would make the blocks the identity)
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape))
    return model


def value_and_grads(model, e, t, s, checkpoint):
    torch.manual_seed(3)  # dropout masks
    model.zero_grad(set_to_none=True)
    e = e.clone().requires_grad_(True)
    h, h_dot = model.hidden_jvp(e, t, s, torch.ones_like(t), checkpoint=checkpoint)
    w = torch.linspace(-1, 1, h.numel()).view_as(h)
    ((w * h).sum() + (w.flip(0) * h_dot).sum() + (h_dot**2).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return h.detach(), h_dot.detach(), e.grad.clone(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointed_hidden_jvp_equals_one_jvp_through_hidden(dropout):
    model = dit(dropout)
    model.train()
    e = torch.randn(3, 7, 32)
    t, s = torch.tensor([0.3, 0.6, 0.9]), torch.tensor([0.1, 0.6, 0.2])
    h, h_dot, ge, grads = value_and_grads(model, e, t, s, checkpoint=True)
    h1, h1_dot, ge1, grads1 = value_and_grads(model, e, t, s, checkpoint=False)
    torch.testing.assert_close(h, h1)
    torch.testing.assert_close(h_dot, h1_dot)
    torch.testing.assert_close(ge, ge1, rtol=1e-4, atol=1e-5)
    trunk = {n for n, _ in model.named_parameters() if not n.startswith(("embed.", "unembed."))}
    assert grads.keys() == grads1.keys() == trunk
    for name in grads:
        scale = grads1[name].abs().max().item()
        torch.testing.assert_close(grads[name], grads1[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    if dropout == 0.0:  # and both are the t-derivative of hidden() itself: one torch.func.jvp through it
        with torch.no_grad(), plain_attention():
            h2, h2_dot = torch.func.jvp(lambda tt: model.hidden(e, tt, s, embedded=True), (t,), (torch.ones_like(t),))
        torch.testing.assert_close(h, h2)
        torch.testing.assert_close(h_dot, h2_dot, rtol=1e-4, atol=1e-5 * h2_dot.abs().max().item())


def test_checkpointed_segment_keeps_only_its_inputs():
    lin = torch.nn.Linear(64, 64)
    fn = lambda x: torch.tanh(lin(torch.tanh(lin(x))))  # noqa: E731
    x, x_dot = torch.randn(8, 64, requires_grad=True), torch.randn(8, 64)
    sizes = {}
    for checkpoint in (True, False):
        total = [0]

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):
                total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, y_dot = jvp_segment(fn, (x,), (x_dot,), tuple(lin.parameters()), checkpoint=checkpoint)
        (y.sum() + y_dot.sum()).backward()
        sizes[checkpoint] = total[0]
    assert sizes[True] <= 2 * x.numel() < sizes[False]


def test_one_tangent_per_primal():
    with pytest.raises(ValueError, match="one tangent per primal"):
        jvp_segment(torch.sin, (torch.ones(2),), ())
