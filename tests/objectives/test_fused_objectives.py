"""The objectives' fused path (flowzoo.kernels) computes the same losses and gradients as the reference path.

Both paths run on a tiny FlowLM on the CPU (the kernels' chunked PyTorch references) from the same random
state. The reference path draws x0 with torch.randn and the kernels from a seed, so the tests hand both the
same x0: the kernels get seeds from a fixed list, and the reference path's interpolant builds
a x0 + b onehot(x1) from the x0 the kernels draw for the same seeds (flowzoo.kernels.reference_noise).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import flowzoo.state as fused_module
import flowzoo.paths.linear as linear_module
from flowzoo.backbones.dit import DiT
from flowzoo.cli import main
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.kernels import reference_noise
from flowzoo.module import FlowLM
from helpers import TINY_NETWORK

SAMPLERS = {"linear": "euler", "dirichlet": "euler", "masked": "ancestral", "autoregressive": "ar"}


def tiny(objective: str, path="linear", head="categorical", fused=None, vocab=300, objective_args=None, causal=False):
    torch.manual_seed(0)
    model = FlowLM(
        backbone={"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 4, "cond_dim": 16, "causal": causal}},
        path=path,
        head=head,
        objective={"name": objective, "init_args": {"fused": fused, **(objective_args or {})}},
        sampler=SAMPLERS[path if isinstance(path, str) else path["name"]],
        vocab_size=vocab,
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere: the zero-initialised unembed / adaLN would hide most gradients
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@contextlib.contextmanager
def same_noise(monkeypatch, rows: int):
    """Kernels draw seeds 100, 101, ... (one per training step: the whole batch of ``rows`` tokens is embedded at
    once); the reference interpolant builds its x_t from the same seeds' x0, consuming each seed's (rows, V) draw
    row by row across its calls (a flow map's diagonal rows, then its map rows)."""
    kernel_seeds, dense_seeds = iter(range(100, 200)), iter(range(100, 200))
    stream = {"x0": None, "used": 0}

    def dense_interpolant(x1, a, b, vocab_size, generator=None):
        if stream["x0"] is None or stream["used"] == rows:
            stream["x0"], stream["used"] = reference_noise(next(dense_seeds), rows, vocab_size, x1.device), 0
        start = stream["used"]
        stream["used"] += x1.numel()
        assert stream["used"] <= rows, "a step sampled more rows than its batch has"
        x0 = stream["x0"][start:stream["used"]].view(*x1.shape, vocab_size)
        onehot = torch.nn.functional.one_hot(x1, vocab_size).float()
        return a[:, None, None] * x0 + b[:, None, None] * onehot

    with monkeypatch.context() as m:
        m.setattr(fused_module, "draw_seed", lambda generator=None: next(kernel_seeds))
        m.setattr(linear_module, "interpolant", dense_interpolant)
        yield


def run_step(model, x1, fused: bool):
    """One objective forward + backward from torch.manual_seed(5): logged values, parameter gradients and the
    largest tensor saved for backward (parameters excluded)."""
    model.objective.fused = fused
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    largest = [0]

    def pack(t):
        try:
            is_param = t.untyped_storage().data_ptr() in params
        except (RuntimeError, NotImplementedError):  # functorch wrappers (jvp) have no plain storage
            is_param = False
        if not is_param:
            largest[0] = max(largest[0], t.numel())
        return t

    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.objective(model, x1)
        out["loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads, largest[0]


CASES = {
    "flow_matching": dict(objective="flow_matching", vocab=4500),  # x0 spans two reference noise blocks
    "flow_matching_tau_softcap": dict(objective="flow_matching", path={"name": "linear", "init_args": {"time": "tau"}},
                                      head={"name": "categorical", "init_args": {"softcap": 3.0}}),
    "psd": dict(objective="psd", vocab=4500),
    "psd_softcap_random_midpoint": dict(objective="psd", head={"name": "categorical", "init_args": {"softcap": 3.0}},
                                        objective_args={"midpoint": "random", "pair_sampling": "uniform"}),
    "lsd": dict(objective="lsd"),
    "lsd_adaptive_tau": dict(objective="lsd", path={"name": "linear", "init_args": {"time": "tau", "sigma": 0.7}},
                             objective_args={"adaptive": True}),
    "lsd_stop_tangent": dict(objective="lsd", objective_args={"tangent_grad": False}),
    "lsd_one_jvp": dict(objective="lsd", objective_args={"checkpoint_jvp": False}),
    # training for prompts: the known positions held at W_in[:, x1] on the embedded state (x_t, x_s, the psd target's
    # X_{s,u}, the lsd landing point), the losses over the unknown positions
    "flow_matching_conditioned": dict(objective="flow_matching", objective_args={"condition_share": 1.0}),
    "psd_conditioned": dict(objective="psd", objective_args={"condition_share": 1.0}),
    "lsd_conditioned": dict(objective="lsd", objective_args={"condition_share": 1.0}),
    "lsd_conditioned_stop_tangent": dict(objective="lsd", objective_args={"condition_share": 1.0, "tangent_grad": False}),
    "mdlm": dict(objective="mdlm", path="masked"),
    "mdlm_softcap_time": dict(objective="mdlm", path={"name": "masked", "init_args": {"time_conditioning": True}},
                              head={"name": "categorical", "init_args": {"softcap": 3.0}}),
    "ar": dict(objective="ar", path="autoregressive", causal=True),
    "ar_softcap": dict(objective="ar", path="autoregressive", causal=True,
                       head={"name": "categorical", "init_args": {"softcap": 3.0}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_loss_and_gradients_equal_the_reference(monkeypatch, case):
    model = tiny(**CASES[case])
    V = model.vocab_size
    x1 = torch.randint(0, V, (4, 12), generator=torch.Generator().manual_seed(2))
    with same_noise(monkeypatch, x1.numel()):
        dense_out, dense_grads, dense_saved = run_step(model, x1, fused=False)
    with same_noise(monkeypatch, x1.numel()):
        fused_out, fused_grads, fused_saved = run_step(model, x1, fused=True)

    assert fused_out.keys() == dense_out.keys()
    for key in dense_out:  # loss and every logged figure (diag, map, map_kl, ppl_bound, ...)
        torch.testing.assert_close(fused_out[key], dense_out[key], rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")
    assert fused_grads.keys() == dense_grads.keys()
    assert "backbone.embed.weight" in fused_grads and "backbone.unembed.weight" in fused_grads
    nonzero = 0
    for name, dense in dense_grads.items():
        scale = dense.abs().max().item()
        nonzero += scale > 0
        torch.testing.assert_close(fused_grads[name], dense, rtol=1e-4, atol=1e-4 * scale, msg=f"{case}: {name}")
    assert nonzero >= 0.8 * len(dense_grads)  # (AR has no time: its adaLN weights get exactly zero gradient)
    # the point of the kernels: the reference path keeps a (rows, V) tensor for backward, the fused one none
    # (flow-map objectives split the batch: half the rows on the diagonal, half off it)
    state = x1.numel() // 2 * V
    assert dense_saved >= state > fused_saved


def test_auto_uses_the_kernels_only_where_they_apply():
    for objective, path in (("flow_matching", "linear"), ("psd", "linear"), ("lsd", "linear"), ("mdlm", "masked")):
        model = tiny(objective, path=path)
        assert model.objective.use_fused(model), objective
    ar = tiny("ar", path="autoregressive", causal=True)
    assert ar.objective.use_fused(ar)
    refused = [
        tiny("flow_matching", head="gaussian"),  # MSE head: no cross-entropy to fuse
        tiny("flow_matching", path="dirichlet"),  # the kernels draw the linear path's noise
        tiny("psd", objective_args={"adaptive": True}),  # adaptive weights need the dense distance
        tiny("lsd", head={"name": "categorical", "init_args": {"softcap": 3.0}}),  # the LSD kernel has no soft-cap
        tiny("flow_matching", fused=False),
    ]
    for model in refused:
        assert not model.objective.use_fused(model), model.config()
    replaced = tiny("flow_matching")
    replaced.logits = lambda x, t, s=None: torch.zeros(*x.shape[:2], 300)  # a test double: auto keeps it
    assert not replaced.objective.use_fused(replaced)


@pytest.mark.parametrize("objective", ["psd", "lsd"])
def test_auto_on_the_cpu_trains_through_the_kernels(monkeypatch, objective):
    """Automatic on the CPU: the flow-map objectives embed the batch once and run both losses through one output
    projection (one shared_head_losses call: the diagonal CE part and the map part)."""
    import flowzoo.state as flowmap_module  # where the flow-map objectives' losses meet the shared head

    heads, embeds = [], []
    real_heads, real_embed = flowmap_module.shared_head_losses, fused_module.noisy_embedding
    monkeypatch.setattr(flowmap_module, "shared_head_losses", lambda w, b, parts, **k: heads.append(parts) or real_heads(w, b, parts, **k))
    monkeypatch.setattr(fused_module, "noisy_embedding", lambda *a, **k: embeds.append(torch.is_grad_enabled()) or real_embed(*a, **k))
    model = tiny(objective)
    model.objective(model, torch.randint(0, 300, (4, 6)))["loss"].backward()
    assert len(heads) == 1
    assert [type(p).__name__ for p in heads[0]] == ["CrossEntropyPart", "CrossEntropyPart" if objective == "psd" else "LagrangianPart"]
    assert embeds == [True]  # the batch once, with gradient; landing points reuse it (a e_s + b softmax_embedding)


def test_lsd_checkpointed_or_stop_tangent_jvp_keeps_no_tangent_activations():
    """The fused lsd step's saved bytes: one torch.func.jvp under autograd keeps every block's primal and tangent
    activations; checkpoint_jvp (the default) keeps the blocks' inputs; tangent_grad=False no jvp graph at all."""
    x1 = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(2))
    saved = {}
    for name, args in {"one_jvp": {"checkpoint_jvp": False}, "checkpointed": {}, "stop_tangent": {"tangent_grad": False}}.items():
        model = tiny("lsd", objective_args=args)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        torch.manual_seed(5)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # what the forward pass keeps
            loss = model.objective(model, x1)["loss"]
        loss.backward()
        saved[name] = total[0]
    assert saved["checkpointed"] < 0.8 * saved["one_jvp"]
    assert saved["stop_tangent"] < 0.8 * saved["one_jvp"]


def storage(t):
    """The storage address of a tensor with a plain storage, else None."""
    try:
        return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None
    except (RuntimeError, NotImplementedError):
        return None


def test_shared_head_keeps_one_weight_gradient_buffer():
    """The point of shared_head_losses: a psd / lsd step allocates one (V, D) gradient for W_out and one for W_in."""
    for objective in ("psd", "lsd"):
        model = tiny(objective, vocab=4500)  # V > NOISE_BLOCK: the reference's column blocks are smaller than W
        V, D = model.backbone.unembed.weight.shape
        model.zero_grad(set_to_none=True)
        loss = model.objective(model, torch.randint(0, V, (4, 6)))["loss"]
        sizes = []

        class Watch(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {storage(t) for t in torch.utils._pytree.tree_flatten((args, kwargs))[0]}
                for t in torch.utils._pytree.tree_flatten(out)[0]:  # new storages of a weight's size (not views)
                    key = storage(t)
                    if key is not None and key not in inputs and t.untyped_storage().nbytes() >= 4 * V * D:
                        sizes.append(str(func))
                return out

        with Watch():
            loss.backward()
        # one W_out buffer (zeros), one W_in noise-projection gradient, nothing else of that size (no summed copies)
        assert len(sizes) == 2, (objective, sizes)


def test_fused_true_refuses_what_the_kernels_cannot_do():
    with pytest.raises(IncompatibleComponentsError, match="fused=true cannot be used here: .*categorical"):
        tiny("flow_matching", head="gaussian", fused=True)
    with pytest.raises(IncompatibleComponentsError, match="path 'dirichlet': fused=true .*linear path"):
        tiny("flow_matching", path="dirichlet", fused=True)
    with pytest.raises(IncompatibleComponentsError, match="head 'categorical': fused=true .*soft-cap"):
        tiny("lsd", head={"name": "categorical", "init_args": {"softcap": 3.0}}, fused=True)
    with pytest.raises(ValueError, match="fused=true does not support adaptive"):
        tiny("psd", objective_args={"adaptive": True}, fused=True)
    with pytest.raises(ValueError, match="fused must be true, false or null"):
        tiny("mdlm", path="masked", fused="yes")


def test_dit_hidden_is_the_state_before_the_output_layer():
    dit = DiT(width=32, depth=2, heads=4, cond_dim=16).bind(11, 10)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(std=0.1)
    t, s = torch.tensor([0.3, 0.8]), torch.tensor([0.1, 0.5])
    for x in (torch.randint(0, 11, (2, 5)), torch.randn(2, 5, 11)):
        h = dit.hidden(x, t, s)
        assert h.shape == (2, 5, 32)
        torch.testing.assert_close(dit(x, t, s), dit.unembed(h))
        torch.testing.assert_close(dit.hidden(dit.embed_input(x), t, s, embedded=True), h)
    with pytest.raises(ValueError, match=r"input embedding must have shape \(B, L, 32\)"):
        dit.hidden(torch.randn(2, 5, 11), t, s, embedded=True)


def test_fit_with_fused_from_the_command_line(tmp_path, monkeypatch):
    calls = []
    real = fused_module.noisy_embedding
    monkeypatch.setattr(fused_module, "noisy_embedding", lambda *a, **k: calls.append(1) or real(*a, **k))
    root = tmp_path / "run"
    code = main([
        "fit", "--data=markov", "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16",
        *TINY_NETWORK,
        "--model.objective.init_args.fused=true", "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
    ])
    assert code == 0
    assert len(calls) >= 3  # every training step embedded x_t with the kernel
    ckpt = torch.load(sorted(root.rglob("*.ckpt"))[-1], map_location="cpu", weights_only=False)
    assert ckpt["flowzoo"]["objective"] == {"name": "flow_matching", "init_args": {"time_sampling": "uniform", "fused": True, "condition_share": 0.0,
                                                                  "loss_weighting": "none", "self_condition_share": 0.5}}
