"""The synthetic Markov language: its named deterministic pairs, a stochastic transition matrix, and an
entropy rate that agrees with an independent computation (and with the chain's own samples)."""

import math
import warnings

import numpy as np
import pytest
import torch

from flowzoo.data.markov import _PAIRS, MarkovChain, MarkovData
from flowzoo.data.mirror import MirrorData
from flowzoo.errors import DataError

CHAINS = [
    {},  # the default language of configs/*markov*.yaml
    {"num_states": 16, "seed": 3},
    {"num_states": 20, "max_successors": 2, "deterministic_share": 0.0, "seed": 1},
    {"num_states": 12, "max_successors": 6, "deterministic_share": 0.9, "seed": 7},
]
IDS = ["default", "16-states", "20-states-no-extra-deterministic", "12-states-mostly-deterministic"]


def stationary_by_power_iteration(P: np.ndarray, iterations: int = 20_000) -> np.ndarray:
    """pi = pi P by iterating the lazy chain (I + P)/2 from the uniform law: the same stationary law,
    and the laziness removes any periodicity, so the iteration converges."""
    lazy = 0.5 * (np.eye(len(P)) + P)
    pi = np.full(len(P), 1.0 / len(P))
    for _ in range(iterations):
        pi = pi @ lazy
    return pi / pi.sum()


def entropy_rate_by_hand(P: np.ndarray, pi: np.ndarray) -> float:
    """H = -sum_i pi_i sum_j P_ij log P_ij, summed term by term over the non-zero entries."""
    total = 0.0
    for i in range(len(P)):
        for j in range(len(P)):
            if P[i, j] > 0:
                total -= pi[i] * P[i, j] * math.log(P[i, j])
    return total


@pytest.mark.parametrize("args", CHAINS, ids=IDS)
def test_named_pairs_are_deterministic(args):
    chain = MarkovChain(**args)
    P = chain.transition
    for head, tail in _PAIRS:
        a, b = chain.words.index(head), chain.words.index(tail)
        assert P[a, b] == 1.0, f"{head} -> {tail} has probability {P[a, b]}"
        assert np.count_nonzero(P[a]) == 1
    # and the samples respect them: every "New" is followed by "York"
    x = chain.sample(400, 24, seed=5)
    seen = 0
    for head, tail in _PAIRS:
        a, b = chain.words.index(head), chain.words.index(tail)
        follows = x[:, 1:][x[:, :-1] == a]
        assert (follows == b).all(), f"{head} followed by {sorted({chain.words[i] for i in follows})}"
        seen += follows.size > 0
    if not args:  # in the default language every pair occurs (see the xfail below for smaller chains)
        assert seen == len(_PAIRS)


@pytest.mark.parametrize("args", CHAINS, ids=IDS)
def test_transition_matrix_is_stochastic_and_sparse(args):
    chain = MarkovChain(**args)
    P = chain.transition
    V = chain.num_states
    assert P.shape == (V, V) and len(set(chain.words)) == V
    assert (P >= 0).all() and np.allclose(P.sum(1), 1.0, atol=1e-12)
    successors = np.count_nonzero(P, axis=1)
    assert successors.min() >= 1 and successors.max() <= args.get("max_successors", 4)


@pytest.mark.parametrize("args", CHAINS, ids=IDS)
def test_entropy_rate_matches_an_independent_computation(args):
    chain = MarkovChain(**args)
    P = chain.transition
    pi = stationary_by_power_iteration(P)
    assert np.abs(pi @ P - pi).max() < 1e-10  # converged
    assert np.abs(chain.stationary - pi).max() < 1e-8  # the chain's own (eigenvector) stationary law
    H = entropy_rate_by_hand(P, pi)
    assert chain.entropy_rate() == pytest.approx(H, rel=1e-9, abs=1e-12)
    assert 0.0 <= H <= math.log(args.get("max_successors", 4))  # at most log(successors) per step


def test_entropy_rate_is_the_nll_of_the_chains_own_samples():
    """Monte Carlo: the mean -log P(x_{i+1} | x_i) over long samples converges to H (first token from pi)."""
    chain = MarkovChain()
    x = chain.sample(2000, 64, seed=11)
    report = chain.evaluate(torch.from_numpy(x))
    assert report["valid_transitions"] == 1.0
    # the per-transition NLL has standard deviation < 1 nat; 126k transitions (correlated along a row) -> << 0.02
    assert abs(report["nll"] - chain.entropy_rate()) < 0.02
    assert abs(report["nll_gap"]) < 0.02
    first = np.bincount(x[:, 0], minlength=chain.num_states) / len(x)
    assert np.abs(first - chain.stationary).max() < 0.04  # the first token is drawn from pi
    assert report["bigram_tv"] < 0.03  # the chain's own bigrams: sampling noise only


def test_bigram_tv_sees_mode_collapse_that_the_valid_rate_cannot():
    chain = MarkovChain()
    x = chain.sample(512, 32, seed=5)
    collapsed = np.repeat(x[:1], 512, axis=0)  # one valid sequence, 512 times
    report = chain.evaluate(torch.from_numpy(collapsed))
    assert report["valid_transitions"] == 1.0 and report["bigram_tv"] > 0.5
    assert chain.evaluate(torch.from_numpy(x))["bigram_tv"] < 0.1
    uniform = chain.evaluate(torch.randint(0, chain.num_states, (512, 32)))["bigram_tv"]
    assert uniform > 0.9  # 48 x 48 uniform bigrams against a sparse law


def test_entropy_rate_reacts_to_the_transition_matrix():
    """The by-hand value is not a constant: a chain with more randomness has a larger entropy rate."""
    sparse = MarkovChain(num_states=20, max_successors=2, deterministic_share=0.9, seed=0)
    dense = MarkovChain(num_states=20, max_successors=6, deterministic_share=0.0, seed=0)
    assert entropy_rate_by_hand(dense.transition, dense.stationary) > entropy_rate_by_hand(sparse.transition, sparse.stationary)
    assert dense.entropy_rate() > sparse.entropy_rate()


def reaches_every_state(chain: MarkovChain) -> bool:
    """Every state reaches every other through transitions of positive probability (the transitive closure)."""
    reach = (np.eye(chain.num_states) + chain.transition) > 0
    for _ in range(int(math.log2(chain.num_states)) + 1):  # transitive closure by repeated squaring
        reach = (reach.astype(float) @ reach.astype(float)) > 0
    return bool(reach.all())


@pytest.mark.parametrize("args", [{}, {"num_states": 16, "seed": 3}, {"num_states": 10, "seed": 7}, {"num_states": 64, "seed": 11}],
                         ids=["default", "16-states", "10-states", "64-states"])
def test_chain_version_2_is_irreducible_every_word_occurs_and_keeps_the_pairs(args):
    chain = MarkovChain(**args, chain_version=2)
    assert reaches_every_state(chain) and (chain.stationary > 0).all() and chain.words_that_never_occur() == []
    for i in range(4):  # New -> York (and the other named pairs) stay deterministic
        assert chain.transition[2 * i, 2 * i + 1] == 1.0
    assert np.allclose(chain.stationary @ chain.transition, chain.stationary)
    rows = chain.sample(2000, 16, seed=0)
    assert set(np.unique(rows)) == set(range(chain.num_states))  # every word is drawn


def test_chain_version_2_has_no_unreachable_word_across_seeds():
    """Version 1 leaves words that never occur in most chains (its pair override cuts the Hamiltonian cycle);
    version 2 in none."""
    counted = {1: 0, 2: 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for version in (1, 2):
            for num_states in (10, 16, 32, 48):
                for seed in range(10):
                    counted[version] += bool(MarkovChain(num_states, seed=seed, chain_version=version).words_that_never_occur())
    assert counted[2] == 0 and counted[1] > 10


def test_chain_version_1_is_the_committed_chain_and_warns_of_its_missing_words():
    """The default stays the chain the committed figures were measured on (its one unreachable word, 'wafe'), and
    says so; 16 states with seed 3 keep only Los -> Angeles."""
    with pytest.warns(UserWarning, match=r"1 of its 48 words never occur \(wafe\); chain_version=2"):
        chain = MarkovChain()
    assert chain.words_that_never_occur() == ["wafe"] and not reaches_every_state(chain)
    with pytest.warns(UserWarning, match="14 of its 16 words never occur"):
        assert len(MarkovChain(num_states=16, seed=3).words_that_never_occur()) == 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MarkovChain(chain_version=2)  # an irreducible chain does not warn
    with pytest.raises(DataError, match=r"unknown chain_version 3; choices: 1, 2"):
        MarkovChain(chain_version=3)


def test_the_data_modules_pass_the_chain_version_on():
    markov = MarkovData(chain_version=2, num_train=8, num_val=8)
    mirror = MirrorData(chain_version=2, num_train=8, num_val=8)
    assert markov.chain.chain_version == 2 and mirror.language.chain.chain_version == 2
    assert markov.chain.words_that_never_occur() == [] == mirror.language.chain.words_that_never_occur()


def test_conditional_likelihood_against_enumeration():
    """log p(x_K) by the forward algorithm equals the sum over every completion; the completion NLL is
    -log p(x_U | x_K) per generated token."""
    import itertools

    chain = MarkovChain(num_states=10, max_successors=3, seed=2)
    x = chain.sample(6, 5, seed=1)
    known = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 1, 1], [0, 1, 0, 1, 0], [0, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 0]], bool)
    every = np.array(list(itertools.product(range(10), repeat=5)))
    p_all = np.exp(chain.log_prob(every))
    for row in range(len(x)):
        agree = (every[:, known[row]] == x[row, known[row]]).all(1)
        assert np.exp(chain.log_marginal(x[row : row + 1], known[row : row + 1]))[0] == pytest.approx(p_all[agree].sum(), rel=1e-10)
    m = chain.conditional_metrics(x, known)
    expected = np.mean([(np.log(p_all[(every[:, known[r]] == x[r, known[r]]).all(1)].sum()) - chain.log_prob(x[r : r + 1])[0])
                        / (~known[r]).sum() for r in range(len(x))])
    assert m["completion_nll"] == pytest.approx(expected, rel=1e-9)
    assert m["boundary_valid"] == 1.0 and m["inner_valid"] == 1.0  # the chain's own rows
    broken = x.copy()
    broken[0, 2] = next(b for b in range(10) if chain.transition[x[0, 1], b] == 0)  # the prompt's edge breaks
    assert chain.conditional_metrics(broken[:1], known[:1])["boundary_valid"] == 0.0
    with pytest.raises(ValueError, match="at least one generated"):
        chain.conditional_metrics(x[:1], np.ones((1, 5), bool))
