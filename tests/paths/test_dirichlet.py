"""Dirichlet path (DFM): simplex states, Dir(1) start, vertex concentration, the C factor, velocity, CLI."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import special, stats

from flowzoo.cli import main
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM
from flowzoo.paths.dirichlet import DirichletPath, dirichlet_c_factor
from helpers import TINY_NETWORK

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sonnets_excerpt.txt"
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
TINY_FLAGS = list(TINY_NETWORK)
V = 6


def _on_simplex(x, atol=1e-5):
    return bool((x >= 0).all()) and torch.allclose(x.sum(-1), torch.ones_like(x.sum(-1)), atol=atol)


def test_states_lie_on_the_simplex():
    path = DirichletPath()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, V, (64, 8), generator=g)
    for t in (0.0, 0.1, 0.5, 1.0):
        xt = path.sample(x1, torch.full((64,), t), V, generator=g)
        assert xt.shape == (64, 8, V) and _on_simplex(xt)
    assert _on_simplex(path.sample_prior(64, 8, V, generator=g))


def test_at_t0_each_coordinate_is_beta_1_v_minus_1():
    """Dir(1, ..., 1) has Beta(1, V - 1) marginals, for the prior and for the path at t = 0."""
    path = DirichletPath()
    g = torch.Generator().manual_seed(1)
    x1 = torch.randint(0, V, (4000, 1), generator=g)
    for x in (path.sample(x1, torch.zeros(4000), V, generator=g), path.sample_prior(4000, 1, V, generator=g)):
        for i in (0, V - 1):
            result = stats.kstest(x[:, 0, i].double().numpy(), stats.beta(1, V - 1).cdf)
            assert result.pvalue > 1e-3, (i, result)
    # and not Beta(1, V - 1) once t > 0: the clean coordinate is Beta(1 + tau, V - 1)
    late = path.sample(x1, torch.full((4000,), 0.5), V, generator=g)
    clean = late[:, 0].gather(-1, x1).squeeze(-1).double().numpy()
    assert stats.kstest(clean, stats.beta(1, V - 1).cdf).pvalue < 1e-6
    assert stats.kstest(clean, stats.beta(1 + path.tau_max * 0.5, V - 1).cdf).pvalue > 1e-3


def test_mass_on_the_clean_vertex_is_1_plus_tau_over_v_plus_tau():
    path = DirichletPath(tau_max=8.0)
    g = torch.Generator().manual_seed(2)
    x1 = torch.randint(0, V, (3000, 4), generator=g)
    means = []
    for t in (0.0, 0.25, 0.5, 1.0):
        xt = path.sample(x1, torch.full((3000,), t), V, generator=g)
        mean = xt.gather(-1, x1[..., None]).mean().item()
        tau = path.tau_max * t
        assert mean == pytest.approx((1 + tau) / (V + tau), abs=0.01)
        means.append(mean)
    assert means == sorted(means) and means[-1] > 0.6


@pytest.mark.parametrize("vocab", [3, 6, 48, 1024])
def test_c_factor_matches_a_finite_difference_of_betainc(vocab):
    """C(x, a) = -d/da I_x(a, b) / (f_{a,b}(x) (1 - x)), b = V - 1, against scipy where the reference is well defined."""
    b = vocab - 1
    xs = np.geomspace(1e-4, 0.99, 30)
    for a in (1.0, 1.5, 3.0, 9.0):
        h = 1e-5 * a
        d_i = (special.betainc(a + h, b, xs) - special.betainc(a - h, b, xs)) / (2 * h)
        with np.errstate(divide="ignore", invalid="ignore"):
            reference = -d_i / (stats.beta.pdf(xs, a, b) * (1 - xs))
        ours = dirichlet_c_factor(torch.tensor(xs), torch.tensor(a), b).numpy()
        assert np.isfinite(ours).all() and (ours >= 0).all()  # also where the density underflows in scipy
        usable = (np.abs(d_i) > 1e-8) & np.isfinite(reference)
        assert usable.sum() >= 5
        np.testing.assert_allclose(ours[usable], reference[usable], rtol=1e-3)


def test_velocity_sums_to_zero_and_points_into_the_simplex():
    path = DirichletPath()
    g = torch.Generator().manual_seed(3)
    x1 = torch.randint(0, V, (32, 5), generator=g)
    t = torch.rand(32, generator=g)
    x = path.sample(x1, t, V, generator=g).double()
    x[:, :, :2] = 0  # put every state on a face of the simplex: two coordinates exactly zero
    x = x / x.sum(-1, keepdim=True)
    denoised = torch.softmax(torch.randn(32, 5, V, generator=g, dtype=torch.float64), dim=-1)
    v = path.velocity(x, denoised, t)
    torch.testing.assert_close(v.sum(-1), torch.zeros(32, 5, dtype=torch.float64), atol=1e-9, rtol=0)
    assert (v[:, :, :2] > 0).all()  # pushes off the face, into the interior
    assert _on_simplex(x + 1e-3 * v, atol=1e-9)


def test_the_velocity_transports_dir1_to_the_path_marginal():
    """Euler on b_t with D = e_0 from Dir(1) reaches Dir(1 + tau e_0) at t = 0.5: the C factor is the right one."""
    path = DirichletPath(tau_max=8.0)
    n, steps, end, vocab = 4000, 40, 0.5, 4
    x = path.sample_prior(n, 1, vocab, generator=torch.Generator().manual_seed(4)).double()
    denoised = torch.zeros(n, 1, vocab, dtype=torch.float64)
    denoised[..., 0] = 1
    for i in range(steps):
        t = torch.full((n,), end * i / steps, dtype=torch.float64)
        x = path.project(x + (end / steps) * path.velocity(x, denoised, t))
    tau = path.tau_max * end
    assert x[..., 0].mean().item() == pytest.approx((1 + tau) / (vocab + tau), abs=0.01)
    assert stats.kstest(x[:, 0, 0].numpy(), stats.beta(1 + tau, vocab - 1).cdf).pvalue > 1e-3
    assert stats.kstest(x[:, 0, 1].numpy(), stats.beta(1, vocab - 1 + tau).cdf).pvalue > 1e-3


def test_euler_steps_are_projected_onto_the_simplex():
    path = DirichletPath()
    g = torch.Generator().manual_seed(5)
    x1 = torch.randint(0, V, (16, 4), generator=g)
    t = torch.full((16,), 0.3)
    x = path.sample(x1, t, V, generator=g)
    denoised = torch.softmax(3 * torch.randn(16, 4, V, generator=g), dim=-1)
    v = path.velocity(x, denoised, t)
    big = x + 5.0 * v  # a step far too long: leaves the simplex
    assert not _on_simplex(big)
    assert _on_simplex(path.project(big))
    small = x.double() + 1e-4 * v.double()
    if (small > 0).all():  # already inside: projection changes nothing
        torch.testing.assert_close(path.project(small), small)
    y = torch.randn(50, V, generator=g, dtype=torch.float64)
    p = path.project(y)
    assert _on_simplex(p, atol=1e-9)
    # Euclidean projection: no other simplex point is closer (checked against random simplex points)
    others = torch.distributions.Dirichlet(torch.ones(V, dtype=torch.float64)).sample((200,))
    assert ((y[:, None] - others[None]).norm(dim=-1) >= (y - p).norm(dim=-1, keepdim=True) - 1e-12).all()


def test_training_times_follow_the_truncated_exponential_in_tau():
    path = DirichletPath(tau_max=8.0, time_scale=2.0)
    u = torch.rand(5000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    tau = (path.tau_max * path.time_from_uniform(u)).numpy()
    assert (tau >= 0).all() and (tau <= path.tau_max).all()
    cdf = lambda s: (1 - np.exp(-s / 2.0)) / (1 - math.exp(-8.0 / 2.0))  # noqa: E731
    assert stats.kstest(tau, cdf).pvalue > 1e-3
    assert torch.equal(DirichletPath(time_scale=None).time_from_uniform(u), u)


def test_semigroup_objectives_and_renoising_are_refused_with_a_reason():
    with pytest.raises(IncompatibleComponentsError, match=r"path 'dirichlet' .*objective 'psd'.*semigroup"):
        FlowLM(backbone=TINY, path="dirichlet", objective="psd", sampler="flow_map", vocab_size=V)
    with pytest.raises(IncompatibleComponentsError, match=r"sampler 'flow_map'.*gamma"):
        FlowLM(backbone=TINY, path="dirichlet", objective="lsd", sampler={"name": "flow_map", "init_args": {"gamma": 0.5}}, vocab_size=V)
    with pytest.raises(ValueError, match="tau_max"):
        DirichletPath(tau_max=0.0)


def _fit_and_sample(tmp_path, data_flags):
    root = tmp_path / "run"
    code = main([
        "fit", "--model.path=dirichlet", *TINY_FLAGS, *data_flags, "--model.sampler.steps=3", "--model.num_val_samples=4",
        "--model.warmup_steps=1", "--trainer.max_steps=3", "--trainer.check_val_every_n_epoch=null", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
    ])
    assert code == 0
    metrics = next(root.rglob("metrics.csv")).read_text()
    assert "val/loss" in metrics
    checkpoint = next((root / "checkpoints").glob("*.ckpt"))
    out = tmp_path / "samples.txt"
    assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "3", "--steps", "2", "--output", str(out)]) == 0
    texts = out.read_text().splitlines()
    assert len(texts) >= 3 and all(texts[:3])
    return metrics


def test_dirichlet_fits_and_samples_on_markov_from_the_command_line(tmp_path):
    metrics = _fit_and_sample(tmp_path, ["--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16"])
    assert "val/sample_valid_transitions" in metrics


def test_dirichlet_fits_and_samples_on_shakespeare_from_the_command_line(tmp_path):
    _fit_and_sample(tmp_path, ["--data=shakespeare", f"--data.text_files=[{FIXTURE}]", f"--data.cache_dir={tmp_path / 'cache'}",
                               "--data.tokenizer=char", "--data.seq_len=16", "--data.batch_size=8"])
