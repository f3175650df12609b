"""Rewards: the contract on ids and soft states, gradients where they exist (against finite differences), a clear
refusal where they do not, and the exact tilted Markov chain against brute-force enumeration."""

import itertools

import numpy as np
import pytest
import torch

from flowzoo import registry
from flowzoo.data.markov import MarkovChain
from flowzoo.errors import FlowzooError, UnknownComponentError
from flowzoo.rewards import RewardNotDifferentiableError, TiltedChain


def test_rewards_are_registered_and_listed():
    assert {"token_count", "regex"} <= set(registry.names("reward"))
    assert "reward:" in registry.describe()
    with pytest.raises(UnknownComponentError, match="valid reward names: .*token_count"):
        registry.get("reward", "no_such_reward")


def test_token_count_on_ids_equals_soft_count_of_one_hots():
    r = registry.build("reward", {"name": "token_count", "init_args": {"tokens": [1, 3]}}).bind(5)
    ids = torch.tensor([[1, 1, 0, 3], [2, 2, 2, 2]])
    assert r(ids).tolist() == [3.0, 0.0]
    assert r(torch.nn.functional.one_hot(ids, 5).float()).tolist() == [3.0, 0.0]
    soft = torch.full((1, 4, 5), 0.2)
    assert r(soft).item() == pytest.approx(4 * 0.4)


def test_token_count_gradient_matches_finite_differences():
    r = registry.build("reward", {"name": "token_count", "init_args": {"tokens": [0, 2], "per_token": True}}).bind(4)
    x = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(r(x).sum(), x)
    eps = 1e-6
    numeric = torch.zeros_like(x)
    for idx in itertools.product(range(2), range(3), range(4)):
        bump = torch.zeros_like(x)
        bump[idx] = eps
        numeric[idx] = ((r(x + bump) - r(x - bump)).sum() / (2 * eps)).item()
    assert torch.allclose(grad, numeric, atol=1e-8)


def test_token_count_names_words_of_the_vocabulary():
    vocab = ["New", "York", "ka", "lo"]
    r = registry.build("reward", {"name": "token_count", "init_args": {"words": ["ka", "York"]}}).bind(4, vocab)
    assert r.ids == [1, 2]
    with pytest.raises(ValueError, match="not in the vocabulary: \\['Paris'\\]"):
        registry.build("reward", {"name": "token_count", "init_args": {"words": ["Paris"]}}).bind(4, vocab)


def test_bad_input_is_refused():
    r = registry.build("reward", "token_count")
    with pytest.raises(FlowzooError, match="not bound"):
        r(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        r.bind(4)
    r = registry.build("reward", {"name": "token_count", "init_args": {"tokens": [1]}}).bind(4)
    with pytest.raises(ValueError, match=r"shape \(B, L, 4\)"):
        r(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        r(torch.tensor([[0, 7]]))


def test_regex_reward_reads_text_and_refuses_gradients():
    words = ["New", "York", "ka"]
    decode = lambda ids: [" ".join(words[i] for i in row) for row in ids.tolist()]  # noqa: E731
    r = registry.build("reward", {"name": "regex", "init_args": {"pattern": r"New York"}}).bind(3, words, decode)
    assert r(torch.tensor([[0, 1, 0, 1], [2, 2, 0, 2]])).tolist() == [2.0, 0.0]
    with pytest.raises(RewardNotDifferentiableError, match="steering needs the gradient of the reward.*best-of-N"):
        r.require_gradient("steering")
    registry.build("reward", {"name": "token_count", "init_args": {"tokens": [0]}}).bind(3).require_gradient("steering")
    with pytest.raises(ValueError, match="bad pattern"):
        registry.build("reward", {"name": "regex", "init_args": {"pattern": "("}})


def brute_force(chain, g, lam, L):
    """Every sequence of length L with its probability under exp(lam r) rho_1 / Z."""
    V = chain.num_states
    seqs = np.array(list(itertools.product(range(V), repeat=L)))
    base = chain.stationary[seqs[:, 0]] * np.prod(chain.transition[seqs[:, :-1], seqs[:, 1:]], axis=1)
    weight = base * np.exp(lam * g[seqs].sum(1))
    return seqs, weight / weight.sum()


@pytest.mark.parametrize("lam", [0.0, 1.3, -0.7])
def test_tilted_chain_equals_brute_force_enumeration(lam):
    chain = MarkovChain(num_states=10, max_successors=3, seed=4)
    g = np.zeros(10)
    g[[2, 5, 7]] = 1.0
    L = 4
    seqs, p = brute_force(chain, g, lam, L)
    tilted = TiltedChain(chain.stationary, chain.transition, g, lam, L)
    assert np.allclose(np.exp(tilted.log_prob(seqs, floor=1e-300)), p, atol=1e-12)
    assert tilted.expected_reward() == pytest.approx(float((p * g[seqs].sum(1)).sum()), rel=1e-10)
    nz = p[p > 0]
    assert tilted.entropy() == pytest.approx(float(-(nz * np.log(nz)).sum()), rel=1e-10)
    # its samples follow it
    x = tilted.sample(20_000, seed=0)
    assert g[x].sum(1).mean() == pytest.approx(tilted.expected_reward(), abs=0.05)
    m = tilted.evaluate(x)
    assert abs(m["kl_proxy"]) < 0.02 and m["valid_transitions"] == 1.0


def test_tilt_for_a_target_mean_reward():
    chain = MarkovChain(seed=0)
    g = np.zeros(chain.num_states)
    g[[3, 9, 11, 20]] = 1.0
    base = TiltedChain(chain.stationary, chain.transition, g, 0.0, 32).expected_reward()
    assert base == pytest.approx(32 * float(chain.stationary @ g), rel=1e-9)  # lambda = 0 is the chain itself
    tilted = TiltedChain.for_mean_reward(chain.stationary, chain.transition, g, 32, 2 * base)
    assert tilted.lam > 0 and tilted.expected_reward() == pytest.approx(2 * base, rel=1e-6)
    with pytest.raises(ValueError, match="out of reach"):
        TiltedChain.for_mean_reward(chain.stationary, chain.transition, g, 32, 33.0)


def test_every_gradient_method_refuses_a_value_only_reward_with_one_message_and_value_methods_take_it():
    from flowzoo.samplers.euler import EulerSampler
    from flowzoo.samplers.flow_map import FlowMapSampler

    regex = {"name": "regex", "init_args": {"pattern": "a"}}
    ending = "reward 'regex' is not differentiable (it reads decoded text); use a method that needs only reward values " \
             "(best-of-N, particle resampling, the policy_gradient objective)"
    refusing = [lambda: registry.build("objective", {"name": "reward", "init_args": {"reward": regex}}),
                lambda: FlowMapSampler(steps=2, reward=regex, guidance=1.0),
                lambda: EulerSampler(steps=2, reward=regex, guidance=1.0)]
    for build in refusing:
        with pytest.raises(RewardNotDifferentiableError) as refused:
            build()
        assert str(refused.value).endswith(ending) and "\n" not in str(refused.value)
    # values only: REINFORCE never differentiates r, particles resample by its values
    assert registry.build("objective", {"name": "policy_gradient", "init_args": {"reward": regex}}).reward.registry_name == "regex"
    assert FlowMapSampler(steps=2, reward=regex, particles=2).steering.particles == 2
