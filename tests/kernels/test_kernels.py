"""Kernel dispatch and the PyTorch references (the CPU path), plus the Triton kernels under the interpreter.

The Triton-vs-reference comparisons live in tests/kernels/test_kernels_interpret.py and run in a subprocess
with TRITON_INTERPRET=1 (the variable must be set before the kernels are decorated at import time).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flowzoo.kernels.cross_entropy as ce
from flowzoo.kernels import (
    TeacherTarget,
    interpolant,
    interpolant_reference,
    linear_cross_entropy,
    linear_cross_entropy_reference,
    lsd_residual_loss,
    lsd_residual_loss_reference,
    noisy_embedding,
    noisy_embedding_reference,
    reference_noise,
    softmax_embedding,
    use_triton,
)
from flowzoo.kernels.noise import NOISE_BLOCK

ROOT = Path(__file__).resolve().parents[2]


def _close(x, y, tol=1e-4):
    torch.testing.assert_close(x, y, rtol=tol, atol=tol)


# ------------------------------------------------------------------ dispatch


def test_dispatch_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("FLOWZOO_KERNELS", raising=False)
    x1 = torch.randint(0, 10, (2, 3))
    assert not use_triton(x1)
    a, b = torch.tensor([0.3, 0.6]), torch.tensor([0.7, 0.4])
    got = interpolant(x1, a, b, 10, generator=torch.Generator().manual_seed(4))
    want = interpolant_reference(x1, a, b, 10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, want)


def test_dispatch_can_be_forced_to_reference(monkeypatch):
    monkeypatch.setenv("FLOWZOO_KERNELS", "reference")
    assert not use_triton(torch.zeros(1))


# ------------------------------------------------------------------ interpolant (reference)


def test_interpolant_reference_law():
    x1 = torch.randint(0, 32, (4, 16))
    b = torch.tensor([0.1, 0.5, 1.0, 2.0])
    assert torch.equal(interpolant_reference(x1, 0.0, b, 32), b[:, None, None] * torch.nn.functional.one_hot(x1, 32))
    noise = interpolant_reference(x1, 1.0, 0.0, 32, generator=torch.Generator().manual_seed(1))
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1.0) < 0.05
    again = interpolant_reference(x1, 1.0, 0.0, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise, again)


# ------------------------------------------------------------------ noisy embedding (reference)


def test_noisy_embedding_reference_redraws_noise_across_blocks():
    ids = torch.randint(0, 2 * NOISE_BLOCK + 5, (2, 3))  # three noise blocks, the last ragged
    V = 2 * NOISE_BLOCK + 5
    weight = torch.randn(8, V, requires_grad=True)
    a, b = torch.rand(2, requires_grad=True), torch.rand(2, requires_grad=True)
    delta = torch.softmax(torch.randn(2, 3, V), -1).requires_grad_()
    c = torch.rand(2, 3, requires_grad=True)
    out = noisy_embedding(ids, weight, a, b, seed=9, delta=delta, c=c)
    grad = torch.randn_like(out)
    params = (weight, a, b, delta, c)
    got = torch.autograd.grad(out, params, grad)
    ref = noisy_embedding_reference(ids, weight, a, b, reference_noise(9, 6, V, "cpu").view(2, 3, V), delta, c)
    want = torch.autograd.grad(ref, params, grad)
    _close(out, ref)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


def test_noisy_embedding_seed_controls_the_draw():
    ids = torch.randint(0, 50, (2, 4))
    weight = torch.randn(8, 50)
    one = noisy_embedding(ids, weight, 1.0, 0.0, seed=3)
    assert torch.equal(one, noisy_embedding(ids, weight, 1.0, 0.0, seed=3))
    assert not torch.allclose(one, noisy_embedding(ids, weight, 1.0, 0.0, seed=4))
    # a = 0 leaves the exact one-hot rows of W
    assert torch.equal(noisy_embedding(ids, weight, 0.0, 1.0, seed=3), weight.t()[ids])


def test_noisy_embedding_bad_input():
    weight = torch.randn(8, 10)
    with pytest.raises(ValueError, match="ids"):
        noisy_embedding(torch.zeros(5, dtype=torch.long), weight, 1.0, 1.0, seed=0)
    with pytest.raises(ValueError, match="broadcast"):
        noisy_embedding(torch.zeros(2, 3, dtype=torch.long), weight, torch.ones(4), 1.0, seed=0)
    with pytest.raises(ValueError, match="delta"):
        noisy_embedding(torch.zeros(2, 3, dtype=torch.long), weight, 1.0, 1.0, seed=0, delta=torch.zeros(2, 3, 9))


# ------------------------------------------------------------------ linear cross-entropy (reference)


def _target(kind, B, L, V, D):
    if kind == "ids":
        return torch.randint(0, V, (B, L))
    if kind == "soft":
        return torch.softmax(2 * torch.randn(B, L, V), -1)
    return TeacherTarget(torch.randn(2, B, L, D), torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize("kind", ["ids", "soft", "teacher"])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_linear_cross_entropy_chunked_matches_dense(monkeypatch, kind, softcap):
    monkeypatch.setattr(ce, "CE_CHUNK", 16)  # 4 chunks over V = 60
    B, L, V, D = 3, 5, 60, 12
    h = torch.randn(B, L, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    target = _target(kind, B, L, V, D)
    grad = torch.rand(B, L)
    out = linear_cross_entropy(h, weight, bias, target, softcap=softcap)
    got = torch.autograd.grad(out, (h, weight, bias), grad)
    ref = linear_cross_entropy_reference(h, weight, bias, target, softcap=softcap)
    want = torch.autograd.grad(ref, (h, weight, bias), grad)
    _close(out, ref)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


def test_linear_cross_entropy_equals_torch_cross_entropy():
    h, weight, bias = torch.randn(7, 16), torch.randn(30, 16), torch.randn(30)
    ids = torch.randint(0, 30, (7,))
    want = torch.nn.functional.cross_entropy(h @ weight.t() + bias, ids, reduction="none")
    _close(linear_cross_entropy(h, weight, bias, ids), want)


def test_linear_cross_entropy_saves_no_vocabulary_sized_tensor():
    R, V, D = 32, 2048, 16
    h = torch.randn(R, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    teacher = TeacherTarget(torch.randn(2, R, D), torch.tensor([0.5, 0.5]))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    for fn in (linear_cross_entropy, linear_cross_entropy_reference):
        sizes.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(h, weight, None, teacher).sum().backward()
        if fn is linear_cross_entropy:
            assert max(sizes) < R * V  # h, W and (R,) statistics only
        else:
            assert max(sizes) >= R * V  # the dense formula keeps its logits


def test_linear_cross_entropy_bad_input():
    h, weight = torch.randn(2, 3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="ids"):
        linear_cross_entropy(h, weight, None, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="range"):
        linear_cross_entropy(h, weight, None, torch.full((2, 3), 10))
    with pytest.raises(ValueError, match="soft target"):
        linear_cross_entropy(h, weight, None, torch.rand(2, 3, 9))
    with pytest.raises(ValueError, match="disagree"):
        linear_cross_entropy(h, torch.randn(10, 7), None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="softcap"):
        linear_cross_entropy(h, weight, None, torch.zeros(2, 3, dtype=torch.long), softcap=0.0)


# ------------------------------------------------------------------ softmax embedding (reference)


@pytest.mark.parametrize("softcap", [None, 2.5])
def test_softmax_embedding_chunked_matches_dense(monkeypatch, softcap):
    monkeypatch.setattr(ce, "CE_CHUNK", 16)
    h, wo, bo, wi = torch.randn(2, 3, 8), torch.randn(40, 8), torch.randn(40), torch.randn(5, 40)
    z = h @ wo.t() + bo
    z = softcap * torch.tanh(z / softcap) if softcap else z
    _close(softmax_embedding(h, wo, bo, wi, softcap=softcap), torch.softmax(z, -1) @ wi.t())


# ------------------------------------------------------------------ LSD residual (reference)


@pytest.mark.parametrize("stop_tangent", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_lsd_residual_chunked_matches_dense(monkeypatch, with_bias, stop_tangent):
    monkeypatch.setattr(ce, "CE_CHUNK", 16)
    B, L, V, D = 2, 5, 60, 12
    h, h_dot = torch.randn(B, L, D, requires_grad=True), torch.randn(B, L, D, requires_grad=True)
    h_teacher = torch.randn(B, L, D)
    weight = torch.randn(V, D, requires_grad=True)
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    kappa = torch.rand(B)
    params = [p for p in (h, h_dot, weight, bias) if p is not None]
    grad = torch.rand(B, L)
    out = lsd_residual_loss(h, h_dot, h_teacher, weight, bias, kappa, stop_tangent=stop_tangent)
    got = torch.autograd.grad(out, params, grad)
    ref = lsd_residual_loss_reference(h, h_dot, h_teacher, weight, bias, kappa, stop_tangent=stop_tangent)
    want = torch.autograd.grad(ref, params, grad, allow_unused=True, materialize_grads=True)
    if stop_tangent:  # no gradient reaches h_dot
        assert not got[1].any()
    _close(out, ref)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


def test_lsd_residual_vanishes_on_a_consistent_map():
    # kappa = 0 (s = t) and a teacher equal to the student: delta - D = 0
    h = torch.randn(3, 4, 8)
    weight = torch.randn(20, 8)
    out = lsd_residual_loss(h, torch.randn(3, 4, 8), h, weight, None, 0.0)
    assert out.abs().max() < 1e-10


# ------------------------------------------------------------------ composed steps (benchmarks/kernel_memory.py)


@pytest.mark.parametrize("step", ["fm", "psd", "lsd"])
def test_benchmark_steps_agree_with_and_without_kernels(monkeypatch, step):
    """The fused fm / psd / lsd steps give the dense step's loss and gradients for the same x0."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel_memory", ROOT / "benchmarks" / "kernel_memory.py")
    km = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(km)
    V, seed = 300, 1234

    def dense_interpolant(x1, a, b, vocab_size, generator=None):  # the x0 the kernel path draws for `seed`
        x0 = reference_noise(seed, x1.numel(), vocab_size, "cpu").view(*x1.shape, vocab_size)
        return a[:, None, None] * x0 + b[:, None, None] * torch.nn.functional.one_hot(x1, vocab_size).float()

    monkeypatch.setattr(km, "draw_seed", lambda gen: seed)
    monkeypatch.setattr(km, "interpolant", dense_interpolant)
    net = km.Net(V, V, 32, 2, 4)
    x1 = torch.randint(0, V, (2, 8))
    results = []
    for kernels in (False, True):
        net.zero_grad()
        loss = km.STEPS[step](net, x1, torch.Generator().manual_seed(5), kernels)
        loss.backward()
        results.append((loss.detach(), net.w_out.grad.clone(), net.w_in.grad.clone()))
    for dense, fused in zip(*results):
        scale = dense.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(fused, dense, rtol=1e-3, atol=1e-3 * scale)  # float32 noise on near-cancelling grads


# ------------------------------------------------------------------ Triton kernels under the interpreter


def test_triton_kernels_match_references_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("FLOWZOO_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).with_name("test_kernels_interpret.py"))],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report
