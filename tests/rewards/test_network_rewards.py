"""Rewards read off trained flowzoo models: ``judge_loglik`` (an AR judge's log-likelihood) and ``classifier``
(log p(class | x) of a sequence classifier), on token ids and on soft states through the network's embedding."""

import pytest
import torch
import torch.nn.functional as F

from flowzoo import registry
from flowzoo.checkpoints import save_pretrained
from flowzoo.errors import CheckpointError, FlowzooError
from flowzoo.module import FlowLM

V, L, B = 9, 7, 5
CAUSAL = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16, "causal": True}}
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}


def perturbed(model):
    with torch.no_grad():  # off the zero-initialised output layer, so the judge is not uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    torch.manual_seed(1)
    judge = perturbed(FlowLM(backbone=CAUSAL, path="autoregressive", objective="ar", sampler="ar", vocab_size=V))
    return save_pretrained(judge.eval(), tmp_path_factory.mktemp("judge") / "model")


def judge_reward(judge_dir, **args):
    scored = FlowLM(backbone=TINY, vocab_size=V)  # the model whose samples are scored: its class loads the judge
    reward = registry.build("reward", {"name": "judge_loglik", "init_args": {"checkpoint": str(judge_dir), **args}})
    return reward.bind(V).resolve(scored)


def test_judge_loglik_on_ids_and_one_hots_is_the_judges_own_log_likelihood(judge_dir):
    reward = judge_reward(judge_dir)
    ids = torch.randint(0, V, (B, L))
    own = -reward.network.objective.token_nll(reward.network, ids).sum(1)  # the ar objective's exact log p(x)
    assert torch.allclose(reward(ids), own, atol=1e-4)
    assert torch.allclose(reward(F.one_hot(ids, V).float()), own, atol=1e-4)
    assert torch.allclose(judge_reward(judge_dir, per_token=True)(ids), own / L, atol=1e-5)
    assert own.std() > 0.1  # a judge that tells sequences apart


def test_judge_loglik_is_differentiable_in_the_soft_state(judge_dir):
    reward = judge_reward(judge_dir)
    x = torch.softmax(torch.randn(B, L, V), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(reward(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.network.parameters())  # the judge stays frozen
    # the directional derivative along the gradient, by central differences, is |g|
    d, h = grad / grad.norm(), 1e-3
    with torch.no_grad():
        slope = (reward(x + h * d) - reward(x - h * d)).sum() / (2 * h)
    assert slope.item() == pytest.approx(grad.norm().item(), rel=0.01)


def test_judge_loglik_refuses_what_it_cannot_read(judge_dir, tmp_path):
    reward = registry.build("reward", {"name": "judge_loglik", "init_args": {"checkpoint": str(judge_dir)}}).bind(V)
    with pytest.raises(FlowzooError, match="has not loaded .* reward.resolve\\(model\\)"):
        reward(torch.zeros(1, L, dtype=torch.long))
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        registry.build("reward", "judge_loglik")
    flow = save_pretrained(FlowLM(backbone=TINY, vocab_size=V), tmp_path / "flow")
    with pytest.raises(CheckpointError, match="is not an autoregressive judge.*flowzoo judge fit"):
        judge_reward(flow)
    with pytest.raises(CheckpointError, match="vocabulary of 9 tokens, the scored model 12"):
        registry.build("reward", {"name": "judge_loglik", "init_args": {"checkpoint": str(judge_dir)}}).bind(12).resolve(
            FlowLM(backbone=TINY, vocab_size=12))


CLASSES = ["comedy", "tragedy", "history"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(2)
    classifier = perturbed(FlowLM(backbone=TINY, objective={"name": "classify", "init_args": {"classes": CLASSES}}, vocab_size=V))
    return save_pretrained(classifier.eval(), tmp_path_factory.mktemp("classifier") / "model")


def classifier_reward(classifier_dir, **args):
    reward = registry.build("reward", {"name": "classifier", "init_args": {"checkpoint": str(classifier_dir), **args}})
    return reward.bind(V).resolve(FlowLM(backbone=TINY, vocab_size=V))


def test_classifier_reward_is_the_log_probability_of_the_target_class(classifier_dir):
    reward = classifier_reward(classifier_dir, target="tragedy")
    net = reward.network
    ids = torch.randint(0, V, (B, L))
    logits = net.objective.class_logits(net, ids)  # (B, 3): the pooled linear head
    assert logits.shape == (B, 3) and logits.std() > 0.01
    assert torch.allclose(reward(ids), logits.log_softmax(-1)[:, 1], atol=1e-5)
    assert torch.allclose(reward(F.one_hot(ids, V).float()), reward(ids), atol=1e-5)
    assert torch.allclose(classifier_reward(classifier_dir, target=2, output="logit")(ids), logits[:, 2], atol=1e-5)
    # the pooled head: the mean over positions of the output layer's first C rows, logit_c = w_c . mean_l h_l + b_c
    h = net.backbone.hidden(ids, None, None).mean(1)  # (B, width)
    W, b = net.backbone.unembed.weight[:3], net.backbone.unembed.bias[:3]
    assert torch.allclose(logits, h @ W.T + b, atol=1e-4)


def test_classifier_reward_reads_soft_states_with_a_gradient(classifier_dir):
    reward = classifier_reward(classifier_dir, target="comedy")
    x = torch.softmax(3 * torch.randn(B, L, V), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(reward(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    d, h = grad / grad.norm(), 1e-3
    with torch.no_grad():
        slope = (reward(x + h * d) - reward(x - h * d)).sum() / (2 * h)
    assert slope.item() == pytest.approx(grad.norm().item(), rel=0.01)


def test_classifier_reward_refuses_bad_targets_and_non_classifiers(classifier_dir, judge_dir):
    with pytest.raises(ValueError, match="target 'farce' is not a class .* comedy, tragedy, history \\(or their indices 0..2\\)"):
        classifier_reward(classifier_dir, target="farce")
    with pytest.raises(ValueError, match="unknown output 'prob'; choices: log_prob, logit"):
        classifier_reward(classifier_dir, output="prob")
    with pytest.raises(CheckpointError, match="is not a sequence classifier.*flowzoo classifier fit"):
        classifier_reward(judge_dir)


@pytest.mark.parametrize("name", ["judge_loglik", "classifier"])
def test_network_rewards_steer_by_gradient_and_count_their_evaluations(name, judge_dir, classifier_dir):
    """Gradient steering of a flow map accepts them (they are differentiable) and loads their network itself."""
    checkpoint = judge_dir if name == "judge_loglik" else classifier_dir
    spec = {"name": name, "init_args": {"checkpoint": str(checkpoint)}}
    model = perturbed(FlowLM(backbone=TINY, vocab_size=V, sampler="flow_map"))
    sampler = {"name": "flow_map", "init_args": {"steps": 2, "reward": spec, "guidance": 0.5}}
    out = model.generate(4, L, sampler=sampler, seed=0)
    assert out.reward_evaluations == (2 + 1) * 4 and torch.isfinite(out.reward).all()  # k lookaheads + the final score
