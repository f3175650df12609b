"""The DiT's input projection of a simplex state (issue 20's ablation): linear (default), normalized, softmax;
the non-linear ones run on the dense state (the fused kernels refuse them, the automatic choice falls back)."""

import pytest
import torch
import torch.nn.functional as F

from flowzoo.backbones.dit import DiT
from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM

V = 9
TINY = {"width": 16, "depth": 1, "heads": 2, "cond_dim": 16}


def backbone(**options) -> DiT:
    torch.manual_seed(0)
    return DiT(**TINY, **options).bind(V, V)


def model_with(objective="flow_matching", sampler="euler", **options) -> FlowLM:
    torch.manual_seed(0)
    model = FlowLM(backbone={"name": "dit", "init_args": {**TINY, **options}}, vocab_size=V,
                   objective={"name": objective, "init_args": {"fused": None}}, sampler={"name": sampler, "init_args": {"steps": 3}})
    with torch.no_grad():  # off the zero-initialised output layer, so the logits depend on the input
        for p in model.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_each_projection_computes_its_equation():
    x = 3 * torch.randn(2, 5, V)
    for options, projected in [
        ({}, x),
        ({"input_projection": "normalized"}, x / x.norm(dim=-1, keepdim=True)),
        ({"input_projection": "softmax"}, torch.softmax(x / 0.1, -1)),
        ({"input_projection": "softmax", "input_temperature": 2.0}, torch.softmax(x / 2.0, -1)),
    ]:
        net = backbone(**options)
        torch.testing.assert_close(net.embed_input(x), projected @ net.embed.weight.t())


def test_the_default_is_todays_linear_projection():
    assert DiT().input_projection == "linear"
    plain, linear = backbone(), backbone(input_projection="linear")
    x, t = torch.randn(2, 5, V), torch.rand(2)
    torch.testing.assert_close(plain(x, t), linear(x, t))


def test_normalized_input_has_one_norm_at_every_time_and_keeps_clean_tokens():
    """||x_t|| falls from sigma sqrt(V) to 1 along the linear path; the normalized input does not: e = W_in x / ||x||."""
    net = backbone(input_projection="normalized")
    ids = torch.randint(0, V, (2, 5))
    onehot = F.one_hot(ids, V).float()
    torch.testing.assert_close(net.embed_input(onehot), net.embed_input(ids))  # a clean token: its row of W_in
    for scale in (0.01, 1.0, 100.0):
        x = torch.randn(2, 5, V)
        torch.testing.assert_close(net.embed_input(scale * x), net.embed_input(x))  # the scale does not reach the trunk
    linear = backbone()
    x = torch.randn(2, 5, V)
    assert not torch.allclose(linear.embed_input(10 * x), linear.embed_input(x))


def test_softmax_input_depends_on_the_temperature_and_is_shift_invariant():
    sharp, soft = backbone(input_projection="softmax", input_temperature=0.05), backbone(input_projection="softmax", input_temperature=5.0)
    x = torch.randn(2, 5, V)
    torch.testing.assert_close(sharp.embed_input(x + 7.0), sharp.embed_input(x))  # softmax(x + c) = softmax(x)
    top = F.one_hot(x.argmax(-1), V).float() @ sharp.embed.weight.t()
    assert (sharp.embed_input(x) - top).abs().max() < (soft.embed_input(x) - top).abs().max()  # low T: the top token's row


@pytest.mark.parametrize("options, message", [
    ({"input_projection": "cosine"}, "unknown input_projection 'cosine'; choices: linear, normalized, softmax"),
    ({"input_projection": "softmax", "input_temperature": 0.0}, "input_temperature must be positive"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DiT(**TINY, **options)


@pytest.mark.parametrize("projection", ["normalized", "softmax"])
def test_nonlinear_projections_refuse_the_fused_path_and_fall_back(projection):
    with pytest.raises(IncompatibleComponentsError, match=f"input_projection={projection} is not linear"):
        FlowLM(backbone={"name": "dit", "init_args": {**TINY, "input_projection": projection}}, vocab_size=V,
               objective={"name": "flow_matching", "init_args": {"fused": True}})
    with pytest.raises(IncompatibleComponentsError, match="runs on the dense state"):
        FlowLM(backbone={"name": "dit", "init_args": {**TINY, "input_projection": projection}}, vocab_size=V,
               sampler={"name": "euler", "init_args": {"fused": True}})
    model = model_with(input_projection=projection)
    assert not model.objective.use_fused(model) and not model.sampler.use_fused(model)
    assert model_with().objective.use_fused(model_with())  # the linear projection keeps the kernels
    net = model.backbone
    with pytest.raises(ValueError, match="embedded=True"):  # an embedding computed elsewhere would skip the projection
        net.hidden(torch.randn(2, 5, TINY["width"]), torch.rand(2), embedded=True)


@pytest.mark.parametrize("projection", ["normalized", "softmax"])
def test_training_and_sampling_read_the_projection(projection):
    """The loss and the samples go through P(x): the model differs from the linear one with the same weights,
    and a training step moves W_in."""
    model, linear = model_with(input_projection=projection), model_with()
    linear.load_state_dict(model.state_dict())
    x1 = torch.randint(0, V, (4, 6))
    torch.manual_seed(1)
    loss = model.objective(model, x1)["loss"]
    torch.manual_seed(1)
    assert not torch.allclose(loss, linear.objective(linear, x1)["loss"])
    loss.backward()
    assert model.backbone.embed.weight.grad.abs().sum() > 0
    out = model.generate(3, 6, seed=0)
    assert out.tokens.shape == (3, 6) and 0 <= out.tokens.min() and out.tokens.max() < V


def test_ids_embed_as_rows_of_w_in_under_every_projection():
    """Masked diffusion and AR feed ids: the projection of a float state does not change them."""
    ids = torch.randint(0, V, (2, 5))
    for projection in ("linear", "normalized", "softmax"):
        net = backbone(input_projection=projection)
        torch.testing.assert_close(net.embed_input(ids), net.embed.weight.t()[ids])
    FlowLM(backbone={"name": "dit", "init_args": {**TINY, "input_projection": "softmax"}}, path="masked", objective="mdlm",
           sampler="ancestral", vocab_size=V)  # no refusal: MDLM's kernels embed ids
