"""Masked diffusion (MDLM): absorbing path, SUBS, continuous-time NELBO, ancestral sampler."""

import math

import pytest
import torch
import torch.nn.functional as F

from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.objectives.mdlm import mdlm_nelbo
from flowzoo.paths.masked import MaskedPath
from flowzoo.samplers.ancestral import AncestralSampler, sample_categorical
from helpers import TINY_NETWORK

V, L = 12, 10
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


def _model(**sampler_args):
    model = FlowLM(backbone=TINY, path="masked", objective="mdlm", sampler={"name": "ancestral", "init_args": sampler_args}, vocab_size=V)
    with torch.no_grad():  # the output layer starts at zero: perturb it so the predictions depend on the input
        for p in model.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _published_nelbo(logits, x1, xt, t, eps):
    """MDLM's SUBS loss written out: mask logit -inf, carry-over of unmasked tokens, weight dsigma/expm1(sigma)."""
    B, Ln, Vn = logits.shape
    full = torch.cat([logits, torch.zeros(B, Ln, 1)], dim=-1)  # column V = [MASK]
    full[..., Vn] = -math.inf  # zero masking probability
    log_p = full - torch.logsumexp(full, dim=-1, keepdim=True)
    unmasked = xt != Vn
    log_p[unmasked] = -math.inf
    log_p[unmasked, xt[unmasked]] = 0.0
    log_p_theta = log_p.gather(-1, x1[..., None]).squeeze(-1)
    tau = 1 - t  # MDLM time: 1 = noise
    sigma = -torch.log1p(-(1 - eps) * tau)
    dsigma = (1 - eps) / (1 - (1 - eps) * tau)
    return -log_p_theta * (dsigma / torch.expm1(sigma))[:, None]


def test_nelbo_matches_the_published_formula_on_random_logits():
    path = MaskedPath(eps=1e-3)
    B = 16
    logits = 3 * torch.randn(B, L, V)
    x1 = torch.randint(0, V, (B, L))
    t = torch.rand(B) * path.t_max
    xt = path.sample(x1, t, V)
    assert (xt == V).any() and (xt != V).any()
    ours = mdlm_nelbo(F.log_softmax(logits, -1), x1, xt, t, path)
    torch.testing.assert_close(ours, _published_nelbo(logits, x1, xt, t, path.eps), rtol=1e-5, atol=1e-6)


def test_nelbo_of_an_exact_predictor_is_zero_and_a_uniform_one_is_positive():
    model = _model()
    x1 = torch.randint(0, V, (32, L))
    model.logits = lambda x, t, s=None: 1e4 * F.one_hot(x1, V).float()  # predicts the data exactly
    out = model.objective(model, x1)
    assert out["masked_share"] > 0.2
    assert out["loss"].item() == 0.0
    model.logits = lambda x, t, s=None: torch.zeros(*x1.shape, V)
    uniform = model.objective(model, x1)["loss"].item()
    assert uniform > 0.5 * math.log(V)  # E_t [w(t) P(masked)] log V = (1 - eps) log V per token


def test_masked_path_marginals_and_prior():
    path = MaskedPath(eps=1e-3)
    x1 = torch.randint(0, V, (4000, L))
    for t in (0.0, 0.3, 0.8):
        xt = path.sample(x1, torch.full((4000,), t), V)
        kept = (xt != V).float().mean().item()
        assert abs(kept - path.alpha(torch.tensor(t)).item()) < 0.01
        assert torch.equal(xt[xt != V], x1[xt != V])
    assert (path.sample_prior(2, L, V) == V).all()


def test_sampler_with_t_equal_to_length_unmasks_exactly_one_token_per_step():
    model = _model(steps=L, mode="counted")
    masks, previous = [], model.path.sample_prior(3, L, V)
    for x, _ in model.sampler.iterate(model.eval(), 3, L, generator=torch.Generator().manual_seed(0)):
        masks.append((x == V).sum(-1))
        kept = previous != V
        assert torch.equal(x[kept], previous[kept])  # SUBS: unmasked tokens are carried over
        previous = x
    assert len(masks) == L
    for i, m in enumerate(masks):
        assert (m == L - 1 - i).all(), f"step {i}: {m.tolist()} masks left"
    assert previous.max() < V


def test_ancestral_cache_skips_the_network_and_changes_nothing():
    model = _model().eval()
    calls = {"n": 0}
    forward = model.backbone.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    model.backbone.forward = counting
    cached = model.generate(4, L, sampler={"name": "ancestral", "init_args": {"steps": 256}}, seed=3)
    used = calls["n"]
    plain = model.generate(4, L, sampler={"name": "ancestral", "init_args": {"steps": 256, "cache": False}}, seed=3)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.nfe == used < 256 <= plain.nfe
    assert cached.tokens.max() < V and cached.tokens.min() >= 0


def test_categorical_sampling_is_float64_and_unbiased():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 1e-9])
    draws = sample_categorical(probs.expand(40_000, 5), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / 40_000
    assert torch.allclose(freq[:4], probs[:4].double(), atol=0.01)
    assert freq[4] == 0


def test_mdlm_refuses_other_paths_and_causal_backbones():
    with pytest.raises(IncompatibleComponentsError, match="masked"):
        FlowLM(backbone=TINY, objective="mdlm", vocab_size=V)
    causal = {"name": "dit", "init_args": {**TINY["init_args"], "causal": True}}
    with pytest.raises(IncompatibleComponentsError, match="bidirectional"):
        FlowLM(backbone=causal, path="masked", objective="mdlm", sampler="ancestral", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match="ancestral|masked"):
        FlowLM(backbone=TINY, path="linear", sampler="ancestral", vocab_size=V)


def test_mdlm_trains_from_the_command_line(tmp_path):
    from flowzoo.cli import main

    code = main([
        "fit", "--model.path=masked", "--model.objective=mdlm", "--model.sampler=ancestral", "--model.sampler.steps=8",
        *TINY_NETWORK,
        "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16", "--trainer.max_steps=4",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_checkpointing=false",
    ])
    assert code == 0
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text()
    assert "val/ppl_bound" in metrics and "val/sample_valid_transitions" in metrics
