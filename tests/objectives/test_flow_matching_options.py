"""flow_matching's ablation options: loss weighting over t and self-conditioning (CDCD / Plaid)."""

import pytest
import torch

from flowzoo.errors import IncompatibleComponentsError
from flowzoo.module import FlowLM

V = 9
TINY = {"width": 16, "depth": 1, "heads": 2, "cond_dim": 16}


def model_with(backbone=None, fused=False, **objective) -> FlowLM:
    torch.manual_seed(0)
    model = FlowLM(backbone={"name": "dit", "init_args": {**TINY, **(backbone or {})}}, vocab_size=V,
                   objective={"name": "flow_matching", "init_args": {"fused": fused, **objective}})
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("fused", [False, True])
def test_velocity_weighting_scales_each_rows_loss_by_one_over_one_minus_t_squared(fused):
    """One row per call, so the weighted loss is w(t) times the unweighted one at the same draws (seed k)."""
    plain, weighted = model_with(fused=fused), model_with(fused=fused, loss_weighting="velocity")
    weighted.load_state_dict(plain.state_dict())
    x1 = torch.randint(0, V, (1, 6))
    for k in range(4):
        torch.manual_seed(k)
        t = float(torch.rand(1))  # the objective's first draw: the row's time (linear path: t = u)
        torch.manual_seed(k)
        base = plain.objective(plain, x1)["loss"]
        torch.manual_seed(k)
        out = weighted.objective(weighted, x1)
        torch.testing.assert_close(out["ce"], base.detach())
        torch.testing.assert_close(out["loss"], base / max(1 - t, 0.1) ** 2, rtol=1e-5, atol=1e-6)


def test_learned_weighting_starts_at_one_and_moves_toward_log_of_the_loss():
    """exp(-w) l + w with w = 0 at the start: the loss is the plain one, and d/dw = 1 - l (the optimum w = log l)."""
    plain, learned = model_with(), model_with(loss_weighting="learned")
    learned.load_state_dict(plain.state_dict(), strict=False)
    x1 = torch.randint(0, V, (4, 6))
    torch.manual_seed(1)
    base = plain.objective(plain, x1)["loss"]
    torch.manual_seed(1)
    out = learned.objective(learned, x1)
    torch.testing.assert_close(out["loss"], base)
    out["loss"].backward()
    bias = learned.objective.loss_weight.mlp[-1].bias
    torch.testing.assert_close(bias.grad, (1 - base.detach()).reshape(1), rtol=1e-5, atol=1e-6)
    assert any(k.startswith("objective.loss_weight.") for k in learned.state_dict())  # saved with the model
    assert not any(k.startswith("objective.") for k in plain.state_dict())  # the default adds nothing


def test_unknown_weighting_lists_the_choices():
    with pytest.raises(ValueError, match="unknown loss_weighting 'snr'; choices: none, velocity, learned"):
        model_with(loss_weighting="snr")


def record_self_cond(model):
    calls, logits = [], model.logits

    def recording(x, t, s=None, self_cond=None):
        out = logits(x, t, s) if self_cond is None else logits(x, t, s, self_cond=self_cond)
        calls.append((self_cond, model.head.denoise(out).detach(), torch.is_grad_enabled()))
        return out

    model.logits = recording
    return calls


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_self_conditioning_trains_on_the_first_passs_detached_prediction(share):
    model = model_with(backbone={"self_condition": True}, fused=None, self_condition_share=share)
    calls = record_self_cond(model)
    x1 = torch.randint(0, V, (64, 6))
    model.objective(model, x1)["loss"].backward()
    (first, first_pred, first_grad), (given, _, second_grad) = calls
    assert first is None and not first_grad and second_grad  # a first pass without gradient, then the trained one
    assert not given.requires_grad
    chosen = given.flatten(1).abs().sum(1) > 0  # rows that read the first prediction
    torch.testing.assert_close(given[chosen], first_pred[chosen])
    assert not given[~chosen].any()
    assert chosen.float().mean().item() == pytest.approx(share, abs=0.2)
    grad = model.backbone.self_embed.weight.grad
    assert (grad.abs().sum() > 0) == (share > 0)  # W_sc learns from the self-conditioned rows only


def test_self_conditioning_refusals():
    with pytest.raises(IncompatibleComponentsError, match="self-conditioning .* dense state"):
        model_with(backbone={"self_condition": True}, fused=True)
    plain = model_with()
    with pytest.raises(ValueError, match="self_condition=true"):
        plain.logits(torch.randn(2, 3, V), torch.rand(2), self_cond=torch.rand(2, 3, V))
    with pytest.raises(ValueError, match="self_condition_share must lie in"):
        model_with(self_condition_share=1.5)


def test_a_self_conditioning_backbone_without_its_input_is_the_plain_network():
    """W_sc starts at zero and D^ = 0 adds nothing: objectives and samplers that pass no prediction (flow maps,
    distillation) read the network as trained on the rows without self-conditioning."""
    model = model_with(backbone={"self_condition": True})
    x, t = torch.randn(2, 3, V), torch.rand(2)
    torch.testing.assert_close(model.logits(x, t, self_cond=torch.zeros(2, 3, V)), model.logits(x, t))
