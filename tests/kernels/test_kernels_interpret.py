"""Triton kernels against their PyTorch references, run by the Triton interpreter on the CPU.

``TRITON_INTERPRET=1`` must be set before the kernels are decorated (when flowzoo.kernels is first
imported), so this module only runs in a process started with it: tests/kernels/test_kernels.py spawns
``TRITON_INTERPRET=1 python -m pytest tests/kernels/test_kernels_interpret.py``. In an ordinary test run
this module is skipped. Sizes are tiny (the interpreter is ~2000x slower than torch); kernel tiles are
16 on the CPU, so the shapes below span several tiles in every dimension, with ragged edges.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/kernels/test_kernels.py in a subprocess with TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

import torch  # noqa: E402

from flowzoo.kernels import (  # noqa: E402
    CrossEntropyPart,
    LagrangianPart,
    TeacherTarget,
    interpolant,
    interpolant_triton,
    linear_cross_entropy,
    linear_cross_entropy_reference,
    lsd_residual_loss,
    lsd_residual_loss_reference,
    noisy_embedding,
    noisy_embedding_reference,
    softmax_embedding,
    shared_head_losses,
    softmax_embedding_reference,
    use_triton,
)

B, L, V, D = 2, 9, 50, 24  # 18 rows (2 row tiles), 4 vocabulary tiles, 2 width tiles; all ragged


def _close(x, y, tol=1e-4):
    torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_interpolant_deterministic_part_is_exact():
    x1 = torch.randint(0, V, (B, L))
    b = torch.tensor([0.25, 2.0])
    out = interpolant_triton(x1, 0.0, b, V, seed=11)
    expected = b[:, None, None] * torch.nn.functional.one_hot(x1, V).float()
    assert torch.equal(out, expected)


def test_interpolant_noise_statistics_and_seed():
    x1 = torch.randint(0, 64, (2, 8))
    noise = interpolant_triton(x1, 1.0, 0.0, 64, seed=5)  # 1024 draws of N(0, 1)
    assert abs(noise.mean().item()) < 0.15
    assert abs(noise.std().item() - 1.0) < 0.1
    assert torch.equal(noise, interpolant_triton(x1, 1.0, 0.0, 64, seed=5))
    assert not torch.allclose(noise, interpolant_triton(x1, 1.0, 0.0, 64, seed=6))
    # the draw for row r depends on (seed, r) only: the first sequence's noise ignores the batch size
    assert torch.equal(noise[:1], interpolant_triton(x1[:1], 1.0, 0.0, 64, seed=5))
    # a x0 + b onehot is linear in the shared draw
    mixed = interpolant_triton(x1, 0.5, 2.0, 64, seed=5)
    _close(mixed, 0.5 * noise + 2.0 * torch.nn.functional.one_hot(x1, 64).float(), 1e-6)


def test_dispatch_forced_to_triton(monkeypatch):
    monkeypatch.setenv("FLOWZOO_KERNELS", "triton")
    x1 = torch.randint(0, V, (B, L))
    assert use_triton(x1)
    out = interpolant(x1, 0.0, 1.0, V, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.nn.functional.one_hot(x1, V).float())


@pytest.mark.parametrize("with_delta", [False, True])
def test_noisy_embedding_matches_reference_on_the_same_noise(with_delta):
    ids = torch.randint(0, V, (B, L))
    weight = torch.randn(D, V, requires_grad=True)
    a = torch.rand(B, requires_grad=True)
    b = torch.rand(B, L, requires_grad=True)  # per-token coefficient
    delta = torch.softmax(torch.randn(B, L, V), -1).requires_grad_() if with_delta else None
    c = torch.rand(B, requires_grad=True) if with_delta else None
    out = noisy_embedding(ids, weight, a, b, seed=123, delta=delta, c=c, backend="triton")
    grad = torch.randn_like(out)
    params = [p for p in (weight, a, b, delta, c) if p is not None]
    got = torch.autograd.grad(out, params, grad)
    noise = interpolant_triton(ids, 1.0, 0.0, V, seed=123)  # the kernel's own x0 for this seed
    ref = noisy_embedding_reference(ids, weight, a, b, noise, delta=delta, c=c)
    want = torch.autograd.grad(ref, params, grad)
    _close(out, ref)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


def _target(kind):
    if kind == "ids":
        return torch.randint(0, V, (B, L))
    if kind == "soft":
        return torch.softmax(2 * torch.randn(B, L, V), -1)
    return TeacherTarget(torch.randn(2, B, L, D), torch.tensor([0.3, 0.7]))


@pytest.mark.parametrize("kind", ["ids", "soft", "teacher"])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_linear_cross_entropy_matches_dense_reference(kind, softcap):
    h = torch.randn(B, L, D, requires_grad=True)
    weight = (0.5 * torch.randn(V, D)).requires_grad_()
    bias = torch.randn(V, requires_grad=True)
    target = _target(kind)
    grad = torch.rand(B, L)
    out = linear_cross_entropy(h, weight, bias, target, softcap=softcap, backend="triton")
    got = torch.autograd.grad(out, (h, weight, bias), grad)
    ref = linear_cross_entropy_reference(h, weight, bias, target, softcap=softcap)
    want = torch.autograd.grad(ref, (h, weight, bias), grad)
    _close(out, ref)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


def test_linear_cross_entropy_without_bias():
    h = torch.randn(B, L, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    target = torch.randint(0, V, (B, L))
    out = linear_cross_entropy(h, weight, None, target, backend="triton")
    got = torch.autograd.grad(out.sum(), (h, weight))
    ref = linear_cross_entropy_reference(h, weight, None, target)
    _close(out, ref)
    for g1, g2 in zip(got, torch.autograd.grad(ref.sum(), (h, weight))):
        _close(g1, g2)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_softmax_embedding_matches_reference(softcap):
    h = torch.randn(B, L, D)
    out_weight, out_bias, in_weight = torch.randn(V, D), torch.randn(V), torch.randn(20, V)
    got = softmax_embedding(h, out_weight, out_bias, in_weight, softcap=softcap, backend="triton")
    _close(got, softmax_embedding_reference(h, out_weight, out_bias, in_weight, softcap=softcap))


@pytest.mark.parametrize("stop_tangent", [False, True])
def test_lsd_residual_matches_dense_reference(stop_tangent):
    h, h_dot = torch.randn(B, L, D, requires_grad=True), torch.randn(B, L, D, requires_grad=True)
    h_teacher = torch.randn(B, L, D)
    weight = (0.5 * torch.randn(V, D)).requires_grad_()
    bias = torch.randn(V, requires_grad=True)
    kappa = torch.rand(B)
    grad = torch.rand(B, L)
    params = (h, h_dot, weight, bias)
    out = lsd_residual_loss(h, h_dot, h_teacher, weight, bias, kappa, stop_tangent=stop_tangent, backend="triton")
    got = torch.autograd.grad(out, params, grad, allow_unused=True)
    ref = lsd_residual_loss_reference(h, h_dot, h_teacher, weight, bias, kappa, stop_tangent=stop_tangent)
    _close(out, ref)
    for g1, g2 in zip(got, torch.autograd.grad(ref, params, grad, allow_unused=True, materialize_grads=True)):
        _close(g1, g2)


@pytest.mark.parametrize("with_bias", [True, False])
def test_shared_head_losses_accumulate_one_gradient_like_separate_calls(with_bias):
    """shared_head_losses on Triton (dW / db kernels in ACCUMULATE mode) = separate dense references, values and grads."""
    h_ce = torch.randn(B, L, D, requires_grad=True)
    h, h_dot = torch.randn(B, L, D, requires_grad=True), torch.randn(B, L, D, requires_grad=True)
    h_teacher = torch.randn(B, L, D)
    weight = (0.5 * torch.randn(V, D)).requires_grad_()
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    ids, kappa = torch.randint(0, V, (B, L)), torch.rand(B)
    teacher = _target("teacher")
    parts = [CrossEntropyPart(h_ce, ids, 3.0), LagrangianPart(h, h_dot, h_teacher, kappa), CrossEntropyPart(h, teacher)]
    params = tuple(p for p in (h_ce, h, h_dot, weight, bias) if p is not None)
    grads = [torch.rand(B, L) for _ in parts]
    out = shared_head_losses(weight, bias, parts, backend="triton")
    got = torch.autograd.grad(out, params, grads)
    ref = [linear_cross_entropy_reference(h_ce, weight, bias, ids, softcap=3.0),
           lsd_residual_loss_reference(h, h_dot, h_teacher, weight, bias, kappa),
           linear_cross_entropy_reference(h, weight, bias, teacher)]
    want = torch.autograd.grad(ref, params, grads)
    for o, r in zip(out, ref):
        _close(o, r)
    for g1, g2 in zip(got, want):
        _close(g1, g2)


@pytest.mark.parametrize("sampler", ["flow_map", "euler"])
def test_sampling_on_embeddings_through_the_triton_kernels(monkeypatch, sampler):
    """The samplers' embedded path (fused=true) on the Triton kernels (noisy_embedding for the prior,
    softmax_embedding per step) gives the dense sampler's tokens for the same x0."""
    import flowzoo.state as embedded
    from flowzoo.kernels import seeded_noise
    from flowzoo.module import FlowLM

    torch.manual_seed(0)
    vocab, B, L = 40, 3, 5
    model = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}},
                   path="linear", objective="psd", sampler="flow_map", vocab_size=vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    monkeypatch.setattr(embedded, "draw_seed", lambda generator=None: 7)
    x0 = model.path.sigma * seeded_noise((B, L), vocab, 7, "cpu", triton_backend=True)
    monkeypatch.setattr(model.path, "sample_prior", lambda *a, **k: x0.clone())
    monkeypatch.setenv("FLOWZOO_KERNELS", "triton")
    fused = model.generate(B, L, sampler={"name": sampler, "init_args": {"steps": 3, "fused": True}}, seed=0).tokens
    monkeypatch.setenv("FLOWZOO_KERNELS", "reference")
    dense = model.generate(B, L, sampler={"name": sampler, "init_args": {"steps": 3, "fused": False}}, seed=0).tokens
    assert torch.equal(fused, dense)
