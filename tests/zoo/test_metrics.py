"""Metrics: generative perplexity against a direct transformers computation, unigram entropy, Markov quality, DDP sums."""

import math
import os

import numpy as np
import pytest
import torch

from flowzoo.data.markov import MarkovChain
from helpers import tiny_gpt2_judge
from flowzoo.judge_fit import judge_fit_args
from flowzoo.judges import FlowzooJudge, HFJudge, chunks, load_judge
from flowzoo.metrics import GenerativePerplexity, MarkovQuality, UnigramEntropy, ValidationLoss

CONTEXT = 16
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "to be or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles",  # > CONTEXT tokens
    "a",
    "New York and San Diego and Los Angeles and Hong Kong",
]


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    return tiny_gpt2_judge(tmp_path_factory.mktemp("judge"), TEXTS, CONTEXT)


def direct_perplexity(directory, texts, context):
    """exp(mean NLL) with transformers' own loss, text by text, piece by piece (no padding, no batching)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text)["input_ids"]
            for i in range(0, len(ids), context):
                piece = torch.tensor([ids[i : i + context]])
                if piece.shape[1] < 2:
                    continue
                loss = model(piece, labels=piece).loss  # mean over the piece's len - 1 predictions
                total += float(loss) * (piece.shape[1] - 1)
                count += piece.shape[1] - 1
    return math.exp(total / count), count


def test_genppl_equals_direct_transformers_perplexity(tiny_judge):
    expected, count = direct_perplexity(tiny_judge, TEXTS, CONTEXT)
    metric = GenerativePerplexity(str(tiny_judge), batch_size=3)
    assert metric.judge.context == CONTEXT
    assert max(len(ids) for ids in metric.judge.encode(TEXTS)) > 2 * CONTEXT  # chunking is exercised
    metric.update(TEXTS[:2])
    metric.update(TEXTS[2:])
    assert int(metric.num_tokens) == count
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-4)


def test_genppl_batch_size_and_order_do_not_matter(tiny_judge):
    one = GenerativePerplexity(str(tiny_judge), batch_size=1)
    one.update(TEXTS)
    many = GenerativePerplexity(str(tiny_judge), batch_size=16)
    many.update(TEXTS[::-1])
    assert float(one.compute()) == pytest.approx(float(many.compute()), rel=1e-6)


def test_genppl_needs_scored_tokens(tiny_judge):
    metric = GenerativePerplexity(str(tiny_judge))
    metric.update(["a"])
    with pytest.raises(ValueError, match="no scored tokens"):
        metric.compute()


def test_chunks_cover_the_sequence():
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5]]  # the lone tail token has nothing to score
    assert chunks(list(range(8)), 3)[-1] == [6, 7]
    with pytest.raises(ValueError):
        chunks([1, 2], 1)


def test_load_judge_unknown_name_is_refused(tmp_path):
    from flowzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot load the judge"):
        load_judge(str(tmp_path / "no-such-judge"))


def test_unigram_entropy_known_inputs():
    metric = UnigramEntropy()
    metric.update(torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3]]))  # H = 0 and log 4
    assert float(metric.compute()) == pytest.approx(math.log(4) / 2)
    metric.update(torch.tensor([[5, 5, 7, 7]]))  # log 2
    assert float(metric.compute()) == pytest.approx((math.log(4) + math.log(2)) / 3)


def test_unigram_entropy_matches_per_sample_unique_counts():
    tokens = torch.randint(0, 11, (6, 20))
    metric = UnigramEntropy()
    metric.update(tokens)
    expected = []
    for row in tokens:
        _, counts = torch.unique(row, return_counts=True)
        p = counts.double() / counts.sum()
        expected.append(float(-(p * p.log()).sum()))
    assert float(metric.compute()) == pytest.approx(np.mean(expected))


def test_markov_quality_matches_chain_evaluate():
    chain = MarkovChain(num_states=20, seed=3)
    good = torch.from_numpy(chain.sample(16, 12, seed=1))
    bad = torch.randint(0, 20, (8, 12))
    metric = MarkovQuality(chain)
    metric.update(good)
    metric.update(bad)
    got = {k: float(v) for k, v in metric.compute().items()}
    expected = chain.evaluate(torch.cat([good, bad]))
    assert got == pytest.approx(expected)
    assert 0 < got["valid_transitions"] < 1


def test_validation_loss_weighted_mean_and_bound():
    metric = ValidationLoss()
    metric.update(torch.tensor(1.0), weight=1)
    metric.update(torch.tensor(2.0), weight=3)
    out = metric.compute()
    assert float(out["loss"]) == pytest.approx(1.75)
    assert float(out["ppl_bound"]) == pytest.approx(math.exp(1.75))


def test_merged_states_equal_one_metric_on_all_data(tiny_judge):
    chain = MarkovChain(num_states=20, seed=3)
    tokens = torch.from_numpy(chain.sample(10, 12, seed=2))
    for make, a, b, full in (
        (UnigramEntropy, tokens[:4], tokens[4:], tokens),
        (lambda: MarkovQuality(chain), tokens[:4], tokens[4:], tokens),
        (lambda: GenerativePerplexity(str(tiny_judge)), TEXTS[:1], TEXTS[1:], TEXTS),
    ):
        left, right, whole = make(), make(), make()
        left.update(a)
        right.update(b)
        whole.update(full)
        left.merge_state(right)
        merged, single = left.compute(), whole.compute()
        if isinstance(single, dict):
            for k in single:
                assert float(merged[k]) == pytest.approx(float(single[k]))
        else:
            assert float(merged) == pytest.approx(float(single))


def _ddp_worker(rank, world, port, directory, result_file):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        chain = MarkovChain(num_states=20, seed=3)
        tokens = torch.from_numpy(chain.sample(8, 12, seed=2))
        entropy, markov, genppl = UnigramEntropy(), MarkovQuality(chain), GenerativePerplexity(directory)
        entropy.update(tokens[rank::world])
        markov.update(tokens[rank::world])
        genppl.update(TEXTS[rank::world])
        out = [float(entropy.compute()), float(markov.compute()["nll"]), float(genppl.compute())]
        if rank == 0:
            torch.save(out, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_reduce_over_ddp_spawn_processes(tiny_judge, tmp_path):
    """Two gloo processes, each with half the samples: compute() equals one process on all of them."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(tiny_judge), str(result)), nprocs=2, join=True)
    got = torch.load(result)
    chain = MarkovChain(num_states=20, seed=3)
    tokens = torch.from_numpy(chain.sample(8, 12, seed=2))
    entropy, markov, genppl = UnigramEntropy(), MarkovQuality(chain), GenerativePerplexity(str(tiny_judge))
    entropy.update(tokens)
    markov.update(tokens)
    genppl.update(TEXTS)
    assert got == pytest.approx([float(entropy.compute()), float(markov.compute()["nll"]), float(genppl.compute())], rel=1e-6)


def test_flowzoo_judge_scores_next_token_nll():
    """A flowzoo model with a causal backbone as judge: NLL = CE of logits at i-1 against the token at i."""
    from flowzoo.module import FlowLM

    model = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32, "causal": True}}, vocab_size=20)
    model.data_spec = {"name": "markov", "init_args": {"num_states": 20, "seq_len": 8, "num_train": 4, "num_val": 4}}
    judge = FlowzooJudge(model)
    assert judge.context == 8
    chain = judge.data.chain
    texts = [" ".join(chain.words[i] for i in row) for row in chain.sample(3, 12, seed=0)]
    ids = judge.encode(texts)
    total, count = judge.score(ids)
    expected_total = 0.0
    with torch.no_grad():
        for row in ids:
            for piece in chunks(row, 8):
                x = torch.tensor([piece])
                logits = model.logits(x, None)
                expected_total += float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
    assert count == 3 * (7 + 3)
    assert total == pytest.approx(expected_total, rel=1e-5)
    bidirectional = FlowLM(vocab_size=20)
    with pytest.raises(ValueError, match="not autoregressive"):
        FlowzooJudge(bidirectional)


def test_judge_fit_args_put_config_first_and_user_flags_last():
    args = judge_fit_args(["--trainer.max_steps=5", "--config", "configs/judge_markov.yaml"])
    assert args[:3] == ["fit", "--config", "configs/judge_markov.yaml"]
    assert args[-1] == "--trainer.max_steps=5"
    assert "--model.objective=ar" in args
    with pytest.raises(ValueError, match="--config"):
        judge_fit_args(["--trainer.max_steps=5"])


def test_completion_perplexity_scores_the_completion_only():
    """NLL(prompt + y) - NLL(prompt) under a causal judge: the completion's tokens only, by the chain rule."""
    from flowzoo.metrics import CompletionPerplexity

    from flowzoo.judges import Judge

    class Toy(Judge):  # every token costs its id in nats; the judge's tokens are the characters
        context, batch_size, name = 64, 8, "toy"

        @property
        def device(self):
            return torch.device("cpu")

        def encode(self, texts):
            return [[int(c) for c in t] for t in texts]

        def score(self, sequences, eos="all"):
            return float(sum(sum(s[1:]) for s in sequences)), sum(len(s) - 1 for s in sequences)

    metric = CompletionPerplexity(Toy())
    metric.update(["12", "3"], ["1234", "35"])  # completions "34" (3 + 4 nats) and "5" (5 nats)
    assert float(metric.compute()) == pytest.approx(math.exp(12 / 3))
