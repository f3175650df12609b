"""Every ablation of docs/ablations.md is a `flowzoo fit` flag that reaches the model it builds, default unchanged."""

import pytest
import torch
import yaml

from flowzoo.cli import main
from flowzoo.module import FlowLM

FLAGS = [
    "--model.path=linear",
    "--model.path.init_args.sigma=0.5",
    "--model.path.init_args.time=tau",
    "--model.backbone.init_args.width=16",
    "--model.backbone.init_args.depth=1",
    "--model.backbone.init_args.heads=2",
    "--model.backbone.init_args.cond_dim=16",
    "--model.backbone.init_args.self_condition=true",
    "--model.backbone.init_args.input_projection=softmax",
    "--model.backbone.init_args.input_temperature=0.5",
    "--model.objective=flow_matching",
    "--model.objective.init_args.loss_weighting=learned",
    "--model.objective.init_args.fused=false",
    "--model.head=categorical",
    "--model.head.init_args.softcap=30",
    "--model.betas=[0.9,0.95]",
    "--model.sampler=euler",
    "--model.sampler.init_args.grid=uniform",
    "--model.sampler.init_args.churn_rate=6.0",
]


def printed_model(capsys, *flags) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data=markov", *flags, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["model"]


def test_the_ablation_flags_reach_the_model(capsys):
    config = printed_model(capsys, *FLAGS)
    config.pop("vocab_size", None)
    model = FlowLM(**config, vocab_size=12)
    assert model.path.sigma == 0.5 and model.path.time == "tau"
    assert model.backbone.self_condition and model.objective.loss_weighting == "learned"
    assert model.backbone.input_projection == "softmax" and model.backbone.input_temperature == 0.5
    assert model.head.softcap == 30 and model.sampler.grid == "uniform" and model.sampler.churn_rate == 6.0
    optimizer = model.configure_optimizers()["optimizer"]
    assert all(group["betas"] == (0.9, 0.95) for group in optimizer.param_groups)
    assert any(p is model.objective.loss_weight.mlp[-1].bias for group in optimizer.param_groups for p in group["params"])
    # sigma: the prior's scale; softcap: c tanh(z / c) before the softmax
    torch.manual_seed(0)
    assert model.path.sample_prior(64, 16, 12).std().item() == pytest.approx(0.5, rel=0.05)
    z = 80 * torch.randn(2, 3, 12)
    torch.testing.assert_close(model.head.denoise(z), torch.softmax(30 * torch.tanh(z / 30), -1))


def test_the_defaults_are_todays(capsys):
    model = printed_model(capsys)
    assert model["path"]["init_args"]["sigma"] == 1.0 and model["path"]["init_args"]["time"] == "linear"
    assert model["objective"]["init_args"]["loss_weighting"] == "none"
    assert model["backbone"]["init_args"]["self_condition"] is False and model["backbone"]["init_args"]["main_time"] == "target"
    assert model["backbone"]["init_args"]["input_projection"] == "linear"
    assert model["head"]["init_args"]["softcap"] is None and model["betas"] == [0.9, 0.99]
    assert model["sampler"]["init_args"]["grid"] == "linspace"
    assert model["sampler"]["init_args"]["churn_rate"] == 0.0 and model["sampler"]["init_args"]["self_condition"] is True
