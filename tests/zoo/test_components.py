import math

import pytest
import torch

from flowzoo import registry
from flowzoo.backbones import DiT
from flowzoo.backbones.base import plain_attention
from flowzoo.heads import CategoricalHead, GaussianHead
from flowzoo.module import FlowLM
from flowzoo.paths import LinearPath
from flowzoo.samplers.base import decode_tokens

V, L, B = 11, 6, 3


def small_model(**parts) -> FlowLM:
    return FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}, vocab_size=V, **parts)


def test_dit_accepts_states_and_ids_and_starts_uniform():
    net = DiT(width=32, depth=2, heads=2, cond_dim=16).bind(V, V)
    x = torch.randn(B, L, V)
    t = torch.rand(B)
    assert net(x, t).shape == (B, L, V)
    assert net(torch.randint(0, V, (B, L)), t).shape == (B, L, V)
    assert torch.allclose(net(x, t), torch.zeros(B, L, V))  # zero-initialised output layer: uniform softmax


def test_dit_rejects_wrong_state_width():
    net = DiT(width=32, depth=1, heads=2, cond_dim=16).bind(V, V)
    with pytest.raises(ValueError, match=r"\(B, L, 11\)"):
        net(torch.randn(B, L, V + 1), torch.rand(B))


def _perturbed(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_plain_attention_matches_sdpa():
    net = _perturbed(DiT(width=32, depth=2, heads=2, cond_dim=16).bind(V, V))
    x, t = torch.randn(B, L, V), torch.rand(B)
    with plain_attention():
        plain = net(x, t)
    assert torch.allclose(net(x, t), plain, atol=1e-5)


def test_causal_backbone_ignores_the_future_and_cache_matches_full_pass():
    net = _perturbed(DiT(width=32, depth=2, heads=2, cond_dim=16, causal=True).bind(V, V))
    ids = torch.randint(0, V, (B, L))
    full = net(ids)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    assert torch.allclose(net(changed)[:, :-1], full[:, :-1], atol=1e-5)
    cache = net.new_cache()
    steps = [net(ids[:, i : i + 1], cache=cache, start=i) for i in range(L)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_time_pair_conditioning_starts_on_the_diagonal():
    net = _perturbed(DiT(width=32, depth=2, heads=2, cond_dim=16).bind(V, V))
    torch.nn.init.zeros_(net.gap_embed.mlp[-1].weight)
    torch.nn.init.zeros_(net.gap_embed.mlp[-1].bias)
    x, t = torch.randn(B, L, V), torch.rand(B)
    assert torch.allclose(net(x, t, s=t * 0.5), net(x, t))  # zero gap embedder: delta_{s,t} = D_t at init


def test_linear_path_endpoints_and_velocity():
    path = LinearPath(sigma=1.0)
    x1 = torch.randint(0, V, (B, L))
    onehot = torch.nn.functional.one_hot(x1, V).float()
    assert torch.allclose(path.sample(x1, torch.ones(B), V), onehot)
    noise = path.sample(x1, torch.zeros(B), V)
    assert abs(noise.std().item() - 1.0) < 0.2
    x = torch.randn(B, L, V)
    t = torch.full((B,), 0.25)
    assert torch.allclose(path.velocity(x, onehot, t), (onehot - x) / 0.75)


def test_linear_path_mean_denoiser_flow_map():
    path = LinearPath()
    x, delta = torch.randn(B, L, V), torch.softmax(torch.randn(B, L, V), -1)
    s, t = torch.full((B,), 0.2), torch.full((B,), 0.6)
    assert torch.allclose(path.flow_map(x, delta, s, s), x)  # X_{s,s} = x
    assert torch.allclose(path.flow_map(x, delta, s, torch.ones(B)), delta)  # X_{s,1} = delta
    expected = (0.4 / 0.8) * x + (0.4 / 0.8) * delta
    assert torch.allclose(path.flow_map(x, delta, s, t), expected)


@pytest.mark.parametrize("bad", [{"sigma": 0.0}, {"t_max": 1.5}])
def test_linear_path_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        LinearPath(**bad)


def test_categorical_head_is_cross_entropy_and_on_simplex():
    head = CategoricalHead()
    logits, target = torch.randn(B, L, V), torch.randint(0, V, (B, L))
    probs = head.denoise(logits)
    assert torch.allclose(probs.sum(-1), torch.ones(B, L))
    expected = -torch.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
    assert torch.allclose(head.loss(logits, target), expected, atol=1e-6)
    soft = torch.nn.functional.one_hot(target, V).float()
    assert torch.allclose(head.loss(logits, soft), expected, atol=1e-6)


def test_softcap_bounds_logits():
    head = CategoricalHead(softcap=5.0)
    assert head.cap(torch.tensor([1e4])).item() <= 5.0


def test_gaussian_head_is_squared_error():
    head = GaussianHead()
    logits, target = torch.randn(B, L, V), torch.randint(0, V, (B, L))
    onehot = torch.nn.functional.one_hot(target, V).float()
    assert torch.allclose(head.loss(logits, target), ((logits - onehot) ** 2).sum(-1))
    assert torch.equal(head.denoise(logits), logits)


def test_decode_argmax_and_temperature():
    probs = torch.softmax(torch.randn(B, L, V) * 3, -1)
    assert torch.equal(decode_tokens(probs, "argmax", 1.0), probs.argmax(-1))
    g = torch.Generator().manual_seed(0)
    cold = decode_tokens(probs, "sample", 1e-3, g)
    assert torch.equal(cold, probs.argmax(-1))  # T -> 0 is argmax


def test_model_denoise_checks_times_and_shapes():
    model = small_model()
    x = torch.randn(B, L, V)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.denoise(x, torch.full((B,), 1.5))
    with pytest.raises(ValueError, match="must not exceed"):
        model.denoise(x, torch.full((B,), 0.2), s=torch.full((B,), 0.6))
    with pytest.raises(ValueError, match="shape"):
        model.denoise(torch.randn(B, L, V + 2), torch.rand(B))
    with pytest.raises(ValueError, match="shape"):
        model.denoise(x, torch.rand(B + 1))


def _seeded_loss(model, x1, seed=123):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model.objective(model, x1)["loss"]


def test_flow_matching_loss_starts_at_log_vocab_and_decreases():
    model = small_model()
    x1 = (torch.arange(L) % V).repeat(16, 1)  # one sequence: learnable at every t > 0
    first = _seeded_loss(model, x1)
    assert abs(first.item() - math.log(V)) < 1e-4  # uniform prediction at init
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model.objective(model, x1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _seeded_loss(model, x1).item() < 0.5 * first.item()


def test_euler_sampler_counts_evaluations_and_is_seeded():
    model = small_model(sampler={"name": "euler", "init_args": {"steps": 5}})
    calls = []
    original = model.backbone.forward
    model.backbone.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    out = model.generate(4, L, seed=3)
    assert out.tokens.shape == (4, L) and out.nfe == 5 and len(calls) == 5
    assert torch.equal(model.generate(4, L, seed=3).tokens, out.tokens)


def test_euler_with_a_perfect_denoiser_reaches_the_target():
    class Constant:
        """D_t(x) = onehot(target) for every x: the ODE flows straight to the target."""

    target = torch.randint(0, V, (2, L))
    model = small_model()
    model.denoise = lambda x, t, s=None: torch.nn.functional.one_hot(target, V).float()
    out = registry.build("sampler", {"name": "euler", "init_args": {"steps": 3}}).sample(model, 2, L)
    assert torch.equal(out.tokens, target)


def test_gaussian_head_trains_and_samples():
    model = small_model(head="gaussian")
    x1 = torch.randint(0, V, (4, L))
    loss = model.objective(model, x1)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.generate(2, L, seed=0).tokens.shape == (2, L)


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="steps"):
        registry.build("sampler", {"name": "euler", "init_args": {"steps": 0}})
    with pytest.raises(ValueError, match="decode"):
        registry.build("sampler", {"name": "euler", "init_args": {"decode": "beam"}})


def test_validation_sample_metrics_use_averaged_weights(tmp_path):
    """With an EMA callback the logged sample metrics come from the averaged weights, as the checkpoint does."""
    import lightning as L_
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from flowzoo.data.markov import MarkovData

    data = MarkovData(num_states=12, num_train=64, num_val=16, seq_len=8, batch_size=16)
    model = FlowLM(backbone=DiT(width=32, depth=1, heads=2, cond_dim=16), vocab_size=data.vocab_size, num_val_samples=16, lr=3e-2)
    trainer = L_.Trainer(
        max_steps=6, limit_val_batches=1, val_check_interval=6, check_val_every_n_epoch=None, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[EMAWeightAveraging(decay=0.5)],
    )
    trainer.fit(model, datamodule=data)
    logged = float(trainer.callback_metrics["val/sample_nll"])
    # after fit the averaged weights are in the model: its samples score what validation logged
    expected = data.evaluate_samples(model.generate(16, data.seq_len, seed=0).tokens)["nll"]
    assert logged == pytest.approx(float(expected), rel=1e-5)
