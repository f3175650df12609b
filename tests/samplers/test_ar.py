"""Autoregressive baseline: KV-cache generation, nucleus, next-token NLL, causality, refusals, CLI."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.samplers.ar import nucleus

ROOT = Path(__file__).resolve().parents[2]
V, L = 10, 12
CAUSAL = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16, "causal": True}}
BIDIRECTIONAL = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


def _model():
    model = FlowLM(backbone=CAUSAL, path="autoregressive", objective="ar", sampler="ar", vocab_size=V)
    with torch.no_grad():  # the output layer starts at zero: perturb every weight so logits depend on the prefix
        for p in model.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8), (1.5, 0.5)])
def test_kv_cache_generation_equals_full_recomputation_token_for_token(temperature, top_p):
    model = _model()
    args = {"temperature": temperature, "top_p": top_p}
    cached = model.generate(16, L, sampler={"name": "ar", "init_args": {**args, "cache": True}}, seed=5)
    plain = model.generate(16, L, sampler={"name": "ar", "init_args": {**args, "cache": False}}, seed=5)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.tokens.shape == (16, L) and cached.tokens.min() >= 0 and cached.tokens.max() < V
    assert len({tuple(r) for r in cached.tokens.tolist()}) > 1  # real draws, not a constant sequence
    other = model.generate(16, L, sampler={"name": "ar", "init_args": {**args, "cache": True}}, seed=6)
    assert not torch.equal(cached.tokens, other.tokens)


def test_incremental_logits_with_the_cache_match_the_full_causal_pass():
    model = _model()
    seq = torch.cat([torch.full((3, 1), V), torch.randint(0, V, (3, L - 1))], dim=1)  # BOS then tokens
    with torch.no_grad():
        full = model.backbone(seq, None, None)  # (3, L, V)
        cache = model.backbone.new_cache()
        steps = [model.backbone(seq[:, i : i + 1], None, None, cache=cache, start=i) for i in range(L)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_nucleus_keeps_the_smallest_top_set_reaching_top_p_and_renormalises():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 9, generator=g, dtype=torch.float64), dim=-1)
    for top_p in (0.05, 0.3, 0.5, 0.9, 0.999):
        kept = nucleus(probs, top_p)
        torch.testing.assert_close(kept.sum(-1), torch.ones(200, dtype=torch.float64))
        for row, out in zip(probs, kept):
            order = row.argsort(descending=True)
            k = int((row[order].cumsum(0) < top_p).sum()) + 1  # smallest k with top-k mass >= top_p
            expected = torch.zeros_like(row)
            expected[order[:k]] = row[order[:k]] / row[order[:k]].sum()
            torch.testing.assert_close(out, expected)
    assert torch.equal(nucleus(probs, 1.0), probs)
    assert ((nucleus(probs, 1e-6) > 0).sum(-1) == 1).all()  # only the most likely token


def test_ar_sampler_draws_only_from_the_nucleus_with_the_tempered_law():
    model = _model()
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -2.0, -3.0, -3.0, -4.0, -5.0])
    model.backbone.forward = lambda x, t=None, s=None, cache=None, start=0: logits.expand(x.shape[0], x.shape[1], V)
    temperature, top_p = 0.8, 0.75
    out = model.generate(4000, 2, sampler={"name": "ar", "init_args": {"temperature": temperature, "top_p": top_p}}, seed=0)
    freq = torch.bincount(out.tokens.flatten(), minlength=V).double() / out.tokens.numel()
    expected = nucleus(torch.softmax(logits.double() / temperature, -1), top_p)
    assert ((expected == 0) <= (freq == 0)).all()  # nothing outside the nucleus
    assert 1 < (expected > 0).sum() < V
    torch.testing.assert_close(freq, expected, atol=0.02, rtol=0)


def test_ar_objective_is_next_token_cross_entropy_on_the_shifted_input():
    model = _model()
    x1 = torch.randint(0, V, (5, L))
    shifted = torch.cat([torch.full((5, 1), V), x1[:, :-1]], dim=1)  # [BOS, x_0 .. x_{L-2}]
    assert torch.equal(model.path.shift_right(x1, V), shifted)
    logits = model.backbone(shifted, None, None)
    direct = F.cross_entropy(logits.reshape(-1, V), x1.reshape(-1))
    out = model.objective(model, x1)
    torch.testing.assert_close(out["loss"], direct)
    torch.testing.assert_close(out["ppl_bound"], direct.exp())
    assert out["loss"] > 0.1  # a random network does not predict the data


def test_logits_are_causal():
    model = _model()
    x1 = torch.randint(0, V, (2, L))
    with torch.no_grad():
        base = model.backbone(model.path.shift_right(x1, V), None, None)
        for j in (0, 4, L - 2):
            changed = x1.clone()
            changed[:, j] = (changed[:, j] + 1) % V
            out = model.backbone(model.path.shift_right(changed, V), None, None)
            # x_j sits at position j + 1 of the shifted input: positions <= j cannot see it, j + 1 must
            torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], rtol=0, atol=1e-6)
            assert (out[:, j + 1] - base[:, j + 1]).abs().max() > 1e-4


def test_incompatible_combinations_are_refused_naming_both():
    with pytest.raises(IncompatibleComponentsError, match=r"objective 'ar' .*backbone 'dit'.*causal"):
        FlowLM(backbone=BIDIRECTIONAL, path="autoregressive", objective="ar", sampler="ar", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match=r"objective 'ar' .*path 'linear'"):
        FlowLM(backbone=CAUSAL, path="linear", objective="ar", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match=r"sampler 'ar' .*path 'masked'"):
        FlowLM(backbone=BIDIRECTIONAL, path="masked", objective="mdlm", sampler="ar", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match=r"sampler 'euler' .*path 'autoregressive'"):
        FlowLM(backbone=CAUSAL, path="autoregressive", objective="ar", sampler="euler", vocab_size=V)
    with pytest.raises(ValueError, match="top_p"):
        FlowLM(backbone=CAUSAL, path="autoregressive", objective="ar", sampler={"name": "ar", "init_args": {"top_p": 0.0}}, vocab_size=V)


def test_ar_config_trains_three_steps_from_the_command_line(tmp_path):
    from flowzoo.cli import main

    code = main([
        "fit", "--config", str(ROOT / "configs" / "ar_markov.yaml"),
        "--model.backbone.init_args.width=32", "--model.backbone.init_args.depth=1", "--model.backbone.init_args.heads=2",
        "--model.backbone.init_args.cond_dim=16", "--model.warmup_steps=1", "--model.num_val_samples=4",
        "--data.init_args.num_train=64", "--data.init_args.num_val=16", "--data.init_args.seq_len=8", "--data.init_args.batch_size=16",
        "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
    assert code == 0
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "val/ppl_bound" in metrics and "val/sample_valid_transitions" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
