"""Where the MDLM and Duo ancestral samplers stop (benchmark comparability, issue 20): ``ancestral`` at the path's
eps by default (every committed table), MDLM's code at 1e-5 with ``end_eps``; ``uniform_ancestral`` at Duo's 1e-5."""

import pytest
import torch

from flowzoo.benchmark import sampler_label
from flowzoo.module import FlowLM

V = 12
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


def model_on(path: str, objective: str, sampler: str) -> FlowLM:
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, path=path, objective=objective, sampler=sampler, vocab_size=V).eval()
    with torch.no_grad():  # off the zero-initialised output layer
        for p in model.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def call_times(model, sampler: dict, length: int = 8) -> list[float]:
    """The time of every network call of one generate()."""
    times, logits = [], model.logits

    def recording(x, t, *args, **kwargs):
        times.append(float(t[0]))
        return logits(x, t, *args, **kwargs)

    model.logits = recording
    model.generate(2, length, sampler=sampler, seed=0)
    del model.logits
    return times


@pytest.mark.parametrize("end_eps", [None, 1e-5, 0.2])
def test_ancestral_times_are_mdlms_linspace_to_end_eps(end_eps):
    """MDLM's _sample: timesteps = linspace(1, eps, T + 1) in its time tau = 1 - t, noise removal at timesteps[-1]."""
    model, T = model_on("masked", "mdlm", "ancestral"), 6
    args = {"steps": T, "cache": False, "noise_removal": True}
    if end_eps is not None:
        args["end_eps"] = end_eps
    eps = model.path.eps if end_eps is None else end_eps  # unset: the path's training eps (1e-3)
    published = 1 - torch.linspace(1, eps, T + 1, dtype=torch.float64)  # flowzoo time of MDLM's timesteps
    got = call_times(model, {"name": "ancestral", "init_args": args}, length=64)
    assert got[:T] == pytest.approx(published[:T].tolist(), abs=1e-6)
    assert len(got) in (T, T + 1)  # + the noise-removal call when a mask is left
    if len(got) == T + 1:
        assert got[-1] == pytest.approx(float(published[-1]), abs=1e-6)


def test_the_default_stops_at_the_paths_eps():
    model = model_on("masked", "mdlm", "ancestral")
    assert model.sampler.end_eps is None and model.sampler.end_time(model.path) == model.path.t_max == pytest.approx(1 - 1e-3)
    default = model.generate(4, 16, sampler={"name": "ancestral", "init_args": {"steps": 8}}, seed=3).tokens
    explicit = model.generate(4, 16, sampler={"name": "ancestral", "init_args": {"steps": 8, "end_eps": 1e-3}}, seed=3).tokens
    assert torch.equal(default, explicit)


def test_masks_left_for_the_final_fill_are_a_share_end_eps():
    """Before noise removal a position is still masked with probability 1 - alpha(t_T) = (1 - eps) end_eps."""
    model = model_on("masked", "mdlm", "ancestral")
    for end_eps in (0.3, 1e-5):
        sampler = model.sampler.__class__(steps=4, end_eps=end_eps)
        states = [x for x, _ in sampler.iterate(model, 64, 64, generator=torch.Generator().manual_seed(0))]
        left = (states[3] == V).float().mean().item()  # after the 4 steps, before the fill
        assert left == pytest.approx((1 - model.path.eps) * end_eps, abs=0.02)
        assert (states[-1] < V).all()


@pytest.mark.parametrize("args, message", [
    ({"mode": "counted", "end_eps": 1e-5}, "mode=counted always ends at t = 1"),
    ({"end_eps": 1.0}, r"end_eps must lie in \[0, 1\)"),
    ({"end_eps": -1e-5}, r"end_eps must lie in \[0, 1\)"),
])
def test_bad_end_eps_is_refused(args, message):
    model = model_on("masked", "mdlm", "ancestral")
    with pytest.raises(ValueError, match=message):
        model.generate(2, 4, sampler={"name": "ancestral", "init_args": args}, seed=0)


def test_a_benchmark_row_names_the_end_time_it_used():
    assert sampler_label({"name": "ancestral", "init_args": {"steps": 8}}) == "ancestral"
    assert sampler_label({"name": "ancestral", "init_args": {"steps": 8, "end_eps": 1e-5}}) == "ancestral end_eps=1e-05"


def test_uniform_ancestral_stops_at_duos_1e_5():
    """Duo's generate_samples(eps=1e-5): linspace(1, 1e-5, T + 1) in its time, then noise removal at 1e-5."""
    model, T = model_on("uniform", "duo", "uniform_ancestral"), 5
    got = call_times(model, {"name": "uniform_ancestral", "init_args": {"steps": T}})
    published = 1 - torch.linspace(1, 1e-5, T + 1, dtype=torch.float64)
    assert got == pytest.approx([*published[:T].tolist(), float(published[-1])], abs=1e-6)
