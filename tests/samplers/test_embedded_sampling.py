"""Samplers on input embeddings (fused=true): the dense samplers' results without a (B, L, V) state."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import flowzoo.state as embedded_module
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.kernels import reference_noise
from flowzoo.module import FlowLM

V, L, B = 40, 6, 5


def model(path="linear", softcap=None, vocab=V):
    torch.manual_seed(0)
    m = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 4, "cond_dim": 16}},
               path=path, head={"name": "categorical", "init_args": {"softcap": softcap}}, objective="psd",
               sampler="flow_map", vocab_size=vocab)
    with torch.no_grad():  # random weights everywhere (zero-initialised unembed / adaLN would make D uniform)
        for p in m.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    return m.eval()


class SameNoise:
    """The embedded samplers draw x0 inside noisy_embedding from seed 7; the dense ones get the same x0."""

    def __init__(self, monkeypatch, m):
        monkeypatch.setattr(embedded_module, "draw_seed", lambda generator=None: 7)
        x0 = m.path.sigma * reference_noise(7, B * L, V, "cpu").view(B, L, V)
        monkeypatch.setattr(m.path, "sample_prior", lambda *a, **k: x0.clone())


def predictions(monkeypatch, m, sampler):
    """The prediction (B, L, V) each sampler decodes, captured at decode_tokens, and the tokens."""
    seen = []
    import flowzoo.samplers.base as base

    real = base.decode_tokens
    for module in (embedded_module,):  # both states decode through flowzoo.state.decode_tokens
        monkeypatch.setattr(module, "decode_tokens", lambda p, *a, **k: seen.append(p) or real(p, *a, **k))
    out = m.generate(B, L, sampler=sampler, seed=0)
    return seen[-1], out.tokens


@pytest.mark.parametrize("sampler", ["euler", "flow_map"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("softcap", [None, 6.0])  # (a cap that saturates makes exact ties in D: no argmax to compare)
def test_embedded_sampling_equals_the_dense_state(monkeypatch, sampler, steps, softcap):
    """Argmax decoding: the same tokens (the embedded path reads the logits in chunks, never whole); sampling
    decode: the same prediction (B, L, V) handed to decode_tokens and the same draws."""
    import flowzoo.kernels.cross_entropy as cross_entropy

    monkeypatch.setattr(cross_entropy, "CE_CHUNK", 7)  # V = 40 in six chunks: the chunked argmax and softmax
    m = model(softcap=softcap)
    SameNoise(monkeypatch, m)
    tokens = {}
    for fused in (False, True):
        tokens[fused] = m.generate(B, L, sampler={"name": sampler, "init_args": {"steps": steps, "fused": fused}}, seed=0).tokens
    assert torch.equal(tokens[True], tokens[False])
    dense, dense_tokens = predictions(monkeypatch, m, {"name": sampler, "init_args": {"steps": steps, "fused": False, "decode": "sample"}})
    fused, fused_tokens = predictions(monkeypatch, m, {"name": sampler, "init_args": {"steps": steps, "fused": True, "decode": "sample"}})
    torch.testing.assert_close(fused, dense, rtol=1e-4, atol=1e-5)
    assert torch.equal(fused_tokens, dense_tokens)


@pytest.mark.parametrize("sampler", ["euler", "flow_map"])
def test_embedded_renoising_is_deterministic_and_changes_the_samples(sampler):
    m = model()
    fused = lambda gamma: m.generate(B, L, sampler={"name": sampler, "init_args": {"steps": 3, "gamma": gamma, "fused": True}}, seed=0).tokens  # noqa: E731
    assert torch.equal(fused(0.5), fused(0.5))
    assert not torch.equal(fused(0.5), fused(0.0))


class LargeTensors(TorchDispatchMode):
    """Counts the outputs of at least ``size`` elements created by aten operations."""

    def __init__(self, size):
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += sum(isinstance(t, torch.Tensor) and t.numel() >= self.size for t in tree_flatten(out)[0])
        return out


@pytest.mark.parametrize("sampler", ["euler", "flow_map"])
def test_embedded_sampling_makes_no_state_sized_tensor_per_step(sampler, monkeypatch):
    """The dense samplers create (B, L, V) tensors at every step; on embeddings only the last step's logits exist
    (the chunked references read V in chunks of 16 columns here, as the kernels do in tiles)."""
    import flowzoo.kernels.cross_entropy as cross_entropy

    monkeypatch.setattr(cross_entropy, "CE_CHUNK", 16)
    vocab = 400  # B L V = 12,000 entries, above any trunk activation (B L 4 width = 3,840)
    m = model(vocab=vocab)
    counts = {}
    for fused in (False, True):
        for steps in (2, 6):
            with LargeTensors(B * L * vocab) as mode:
                m.generate(B, L, sampler={"name": sampler, "init_args": {"steps": steps, "fused": fused}}, seed=0)
            counts[fused, steps] = mode.count
    assert counts[False, 6] > counts[False, 2]  # dense: grows with the steps
    # embedded: a fixed few (the prior's noise, which the CPU reference draws in blocks of 4,096 columns)
    assert counts[True, 6] == counts[True, 2] < counts[False, 2]


def test_fused_true_needs_the_linear_path_and_auto_keeps_the_dense_state_on_the_cpu():
    with pytest.raises(IncompatibleComponentsError, match="fused=true"):
        FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 4, "cond_dim": 16}},
               path="dirichlet", objective="flow_matching", sampler={"name": "euler", "init_args": {"fused": True}}, vocab_size=V)
    m = model()
    assert not m.sampler.use_fused(m)  # automatic: the Triton kernels run on CUDA only
    with pytest.raises(ValueError, match="fused must be true, false or null"):
        FlowLM(backbone="dit", path="linear", objective="psd", sampler={"name": "flow_map", "init_args": {"fused": "yes"}}, vocab_size=V)


def test_sampling_memory_benchmark_writes_its_table(tmp_path):
    """benchmarks/sampling_memory.py at a tiny size: a row per sampler, embeddings below the dense state."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("sampling_memory", root / "benchmarks" / "sampling_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "sampling.md"
    bench.main(["--device", "cpu", "--vocab", "3000", "--batch", "2", "--length", "8", "--width", "16", "--depth", "1",
                "--heads", "2", "--steps", "2", "--runs", "flow_map dense,flow_map fused", "--out", str(out)])
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.read_text().splitlines()
            if line.startswith("| flow_map")}
    assert rows["flow_map fused"] < rows["flow_map dense"]
