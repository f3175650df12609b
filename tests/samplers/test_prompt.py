"""Conditional generation: every sampler returns the prompt's known positions unchanged; impossible requests fail clearly."""

from types import SimpleNamespace

import pytest
import torch

from flowzoo import registry
from flowzoo.errors import PromptError
from flowzoo.module import FlowLM
from flowzoo.prompt import HOLE_MARKER, Prompt, as_prompt

V, L, B = 11, 10, 3
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
CAUSAL = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16, "causal": True}}

# (sampler spec, the rest of the model): every registered sampler, on each kind of state it runs on
CASES = {
    "euler": ({"name": "euler", "init_args": {"steps": 3}}, {}),
    "euler-embedded": ({"name": "euler", "init_args": {"steps": 3, "fused": True}}, {}),
    "euler-dirichlet": ({"name": "euler", "init_args": {"steps": 3}}, {"path": "dirichlet"}),
    "euler-churn": ({"name": "euler", "init_args": {"steps": 3, "gamma": 0.5}}, {}),
    "euler-churn-embedded": ({"name": "euler", "init_args": {"steps": 3, "gamma": 0.5, "fused": True}}, {}),
    "flow_map": ({"name": "flow_map", "init_args": {"steps": 2}}, {"objective": "lsd"}),
    "flow_map-embedded": ({"name": "flow_map", "init_args": {"steps": 2, "gamma": 0.5, "fused": True}}, {"objective": "lsd"}),
    "flow_map-churn": ({"name": "flow_map", "init_args": {"steps": 3, "gamma": 0.5}}, {"objective": "lsd"}),
    "marginal": ({"name": "marginal"}, {}),
    "ancestral": ({"name": "ancestral", "init_args": {"steps": 4}}, {"path": "masked", "objective": "mdlm"}),
    "ancestral-counted": ({"name": "ancestral", "init_args": {"steps": 4, "mode": "counted"}}, {"path": "masked", "objective": "mdlm"}),
    "uniform_ancestral": ({"name": "uniform_ancestral", "init_args": {"steps": 3}}, {"path": "uniform", "objective": "duo"}),
    "uniform_ancestral-greedy": ({"name": "uniform_ancestral", "init_args": {"steps": 3, "noise_removal": "greedy"}}, {"path": "uniform", "objective": "duo"}),
    "ar": ({"name": "ar"}, {"path": "autoregressive", "objective": "ar", "backbone": CAUSAL}),
    # the samplers' other options: drawn decodes, explicit times, a Gaussian head, no caches, nucleus sampling
    "euler-sample-decode": ({"name": "euler", "init_args": {"steps": 3, "decode": "sample", "temperature": 0.7}}, {}),
    "euler-gaussian": ({"name": "euler", "init_args": {"steps": 3}}, {"head": "gaussian"}),
    "flow_map-times-sample-decode": ({"name": "flow_map", "init_args": {"times": [0.0, 0.3, 1.0], "decode": "sample"}}, {"objective": "lsd"}),
    "marginal-hot": ({"name": "marginal", "init_args": {"temperature": 2.0}}, {}),
    "ancestral-uncached-noisy-end": ({"name": "ancestral", "init_args": {"steps": 4, "cache": False, "noise_removal": False}},
                                     {"path": "masked", "objective": "mdlm"}),
    "ar-uncached-nucleus": ({"name": "ar", "init_args": {"cache": False, "top_p": 0.8, "temperature": 0.7}},
                            {"path": "autoregressive", "objective": "ar", "backbone": CAUSAL}),
}


def _model(case: str) -> FlowLM:
    sampler, parts = CASES[case]
    parts = {"backbone": TINY, **parts}
    model = FlowLM(vocab_size=V, sampler=sampler, **parts)
    with torch.no_grad():  # zero-initialised output layers: perturb every weight so outputs depend on the input
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _prefix(K: int = 4) -> Prompt:
    return Prompt.prefix(torch.randint(0, V, (B, K)), L)


def _holes() -> Prompt:
    mask = torch.tensor([[True, True, False, False, True, False, True, True, False, False]])
    return Prompt(torch.randint(0, V, (1, L)), mask)


def test_every_registered_sampler_is_covered():
    assert {spec["name"] for spec, _ in CASES.values()} == set(registry.names("sampler"))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("hold", ["clean", "path"])
def test_known_positions_come_back_unchanged(case, hold):
    model = _model(case)
    prompts = [_prefix()] + ([] if CASES[case][0]["name"] == "ar" else [_holes()])
    for prompt in prompts:
        prompt = Prompt(prompt.known, prompt.mask, hold)
        out = model.generate(B, L, seed=0, prompt=prompt)
        mask = prompt.mask.expand(B, L)
        assert out.tokens.shape == (B, L)
        assert torch.equal(out.tokens[mask], prompt.known.expand(B, L)[mask])
        assert int(out.tokens.min()) >= 0 and int(out.tokens.max()) < V


@pytest.mark.parametrize("case", ["euler", "ancestral", "ar", "flow_map"])
def test_the_prompt_conditions_the_rest(case):
    """Two different prompts, the same seed: the generated positions change (the network reads the prompt)."""
    model = _model(case)
    a = model.generate(B, L, seed=0, prompt=torch.zeros(B, 5, dtype=torch.long))
    b = model.generate(B, L, seed=0, prompt=torch.full((B, 5), 7))
    if a.prediction is not None:  # a random network's argmax barely moves: compare the predictions themselves
        assert not torch.allclose(a.prediction[:, 5:], b.prediction[:, 5:])
    else:
        assert not torch.equal(a.tokens[:, 5:], b.tokens[:, 5:])


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_sampler_refuses_a_prompt_longer_than_the_sequence_and_ar_refuses_holes(case):
    model = _model(case)
    with pytest.raises(PromptError, match=f"has {L + 2} tokens but the sequence has only {L}"):
        model.generate(B, L, prompt=list(range(L + 2)))
    with pytest.raises(PromptError, match=f"spans {L + 1} positions but the sequence has {L}; shorten the prompt"):
        model.generate(B, L, prompt=Prompt.prefix([1, 2], L + 1))
    if CASES[case][0]["name"] == "ar":
        with pytest.raises(PromptError, match="an autoregressive model cannot infill"):
            model.generate(B, L, prompt=_holes())
    else:
        assert model.generate(B, L, seed=0, prompt=_holes()).tokens.shape == (B, L)


def test_ar_prefix_with_cache_matches_without():
    model = _model("ar")
    prompt = _prefix(3)
    cached = model.generate(B, L, seed=1, prompt=prompt)
    plain = model.generate(B, L, seed=1, prompt=prompt, sampler={"name": "ar", "init_args": {"cache": False}})
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.nfe == L - 3


def test_ar_refuses_to_infill_with_the_reason():
    model = _model("ar")
    with pytest.raises(PromptError, match="cannot infill"):
        model.generate(B, L, prompt=_holes())


def test_prompt_longer_than_the_sequence_is_refused():
    model = _model("euler")
    with pytest.raises(PromptError, match="has 12 tokens but the sequence has only 10"):
        model.generate(B, L, prompt=list(range(11)) + [0])
    with pytest.raises(PromptError, match="only 10"):
        Prompt.infill([[1] * 5, [2] * 5], hole_length=3, length=L)


def test_bad_prompts_are_refused():
    model = _model("euler")
    with pytest.raises(PromptError, match=r"must lie in \[0, 11\)"):
        model.generate(B, L, prompt=[3, 11])
    with pytest.raises(PromptError, match="nothing is left"):
        model.generate(B, L, prompt=Prompt(torch.zeros(1, L, dtype=torch.long), torch.ones(1, L, dtype=torch.bool)))
    with pytest.raises(PromptError, match="tokenizer"):
        model.generate(B, L, prompt="some text")
    with pytest.raises(PromptError, match="rows"):
        model.generate(B, L, prompt=Prompt.prefix(torch.zeros(2, 3, dtype=torch.long), L))
    with pytest.raises(PromptError, match="hold"):
        Prompt(torch.zeros(1, L, dtype=torch.long), torch.zeros(1, L, dtype=torch.bool), hold="sticky")


def test_infill_layout():
    p = Prompt.infill([[1, 2], [3]], hole_length=2, length=6)
    assert p.mask.tolist() == [[True, True, False, False, True, False]]
    assert p.known[p.mask].tolist() == [1, 2, 3]
    assert not p.is_prefix and as_prompt([4, 5], 6).is_prefix
    assert HOLE_MARKER == "[...]"


def _saved_markov_model(tmp_path, **parts):
    from flowzoo.data.markov import MarkovData

    data = MarkovData(num_states=12, num_train=8, num_val=8, seq_len=L)
    model = FlowLM(backbone=TINY, vocab_size=data.vocab_size, sampler={"name": "euler", "init_args": {"steps": 2}}, **parts)
    model.data_spec = registry.spec(data)
    model.save_pretrained(tmp_path / "model")
    return data, str(tmp_path / "model")


def test_sample_prompt_and_infill_from_the_command_line(tmp_path, capsys):
    from flowzoo.cli import main

    data, folder = _saved_markov_model(tmp_path)
    words = data.chain.words
    assert main(["sample", "--checkpoint", folder, "--num-samples", "2", "--prompt", f"{words[0]} {words[1]} {words[2]}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{words[0]} {words[1]} {words[2]} {{{{")  # the prompt, then the generated part apart
    assert '"boundary_valid"' in out and '"completion_nll"' in out
    assert main(["sample", "--checkpoint", folder, "--num-samples", "2", "--hole-length", "3",
                 "--infill", f"{words[3]} {HOLE_MARKER} {words[4]} {words[5]}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{words[3]} {{{{") and f"}}}} {words[4]} {words[5]} {{{{" in out
    assert main(["sample", "--checkpoint", folder, "--prompt", " ".join(words[:1] * (L + 1))]) == 2
    err = capsys.readouterr().err
    assert f"has {L + 1} tokens but the sequence has only {L}" in err and "Traceback" not in err


def test_infill_on_an_ar_model_is_one_clear_message(tmp_path, capsys):
    from flowzoo.cli import main

    data, folder = _saved_markov_model(tmp_path)
    model = FlowLM(backbone=CAUSAL, path="autoregressive", objective="ar", sampler="ar", vocab_size=data.vocab_size)
    model.data_spec = registry.spec(data)
    model.save_pretrained(tmp_path / "ar")
    w = data.chain.words
    assert main(["sample", "--checkpoint", str(tmp_path / "ar"), "--infill", f"{w[0]} {HOLE_MARKER} {w[1]}"]) == 2
    err = capsys.readouterr().err
    assert "cannot infill" in err and "Traceback" not in err


def test_condition_mask_shares_and_shapes():
    from flowzoo.prompt import condition_mask

    x1 = torch.zeros(4000, L, dtype=torch.long)
    known = condition_mask(x1, 0.5, torch.Generator().manual_seed(0))
    rows = known.any(1)
    assert abs(rows.float().mean().item() - 0.5) < 0.05
    assert (~known).any(1).all()  # something is always left to learn
    assert not condition_mask(x1, 0.0).any()


def test_flow_matching_with_condition_share_presents_known_positions_clean_and_scores_only_the_rest():
    """The loss is the head's CE at D_t(x_t with the known positions at onehot(x1)), averaged over unknown positions."""
    import torch.nn.functional as F

    from flowzoo.prompt import condition_mask
    from flowzoo.timesampling import sample_uniform_times

    model = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "flow_matching", "init_args": {"condition_share": 1.0, "fused": False}})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x1 = torch.randint(0, V, (6, L))
    torch.manual_seed(3)
    loss = float(model.objective(model, x1)["loss"])
    torch.manual_seed(3)
    t = model.path.time_from_uniform(sample_uniform_times(6, "uniform"))
    known = condition_mask(x1, 1.0)  # drawn before x_t
    x = model.path.sample(x1, t, V)
    x = torch.where(known[..., None], F.one_hot(x1, V).float(), x)
    per_token = model.head.loss(model.logits(x, t), x1).detach()  # (B, L)
    assert known.any() and loss == pytest.approx(float(per_token[~known].mean()), rel=1e-5)
    assert loss != pytest.approx(float(per_token.mean()), rel=1e-3)
    embedded = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "flow_matching", "init_args": {"condition_share": 0.5, "fused": True}})
    assert torch.isfinite(embedded.objective(embedded, x1)["loss"])
    with pytest.raises(ValueError, match="condition_share"):
        FlowLM(backbone=TINY, vocab_size=V, objective={"name": "flow_matching", "init_args": {"condition_share": 1.5}})


def test_show_completion_sets_the_generated_spans_apart():
    from flowzoo.sampling import show_completion

    chars = lambda t: ["".join("abcdefghij"[i] for i in row) for row in t.tolist()]  # noqa: E731
    words = lambda t: [" ".join("abcdefghij"[i] * 2 for i in row) for row in t.tolist()]  # noqa: E731
    tokens = torch.tensor([0, 1, 2, 3, 4, 5])
    known = torch.tensor([True, True, False, False, True, False])
    assert show_completion(chars, tokens, known) == "ab{{cd}}e{{f}}"
    assert show_completion(words, tokens, known) == "aa bb {{cc dd}} ee {{ff}}"


def test_generate_in_batches_equals_one_draw_per_batch_with_its_row_offset_seed_and_prompt_rows():
    from flowzoo.sampling import generate_in_batches

    model = _model("euler")
    rows = torch.randint(0, V, (5, L))
    mask = torch.zeros(5, L, dtype=torch.bool)
    mask[:, :4] = True
    prompt = Prompt(rows, mask, "path")
    tokens, nfe = generate_in_batches(model, 5, L, CASES["euler"][0], seed=7, batch=2, prompt=prompt)
    assert tokens.shape == (5, L) and nfe == 3 and torch.equal(tokens[:, :4], rows[:, :4])
    for i in (0, 2, 4):  # batches of rows 0-1, 2-3, 4, seeded 7·10^6 + i, each with its own rows of the prompt
        part = Prompt(rows[i:i + 2], mask[i:i + 2], "path")
        alone = model.generate(min(2, 5 - i), L, sampler=CASES["euler"][0], seed=7_000_000 + i, prompt=part).tokens
        assert torch.equal(tokens[i:i + 2], alone)
    free, _ = generate_in_batches(model, 3, L, CASES["euler"][0], seed=0, batch=2)
    assert torch.equal(free[2:], model.generate(1, L, sampler=CASES["euler"][0], seed=2).tokens)  # seed 0: the row offset alone


def test_two_sampling_seeds_share_no_draw_and_seed_0_keeps_its_own():
    """With seed + index, sampling seed 1's batches 0..2 were seed 0's batches 1..3: a 'second seed' redrew a quarter."""
    from flowzoo.sampling import batch_seed, generate_in_batches

    assert [batch_seed(0, b) for b in range(4)] == [0, 1, 2, 3]  # seed 0's draws as before
    first = {batch_seed(0, b) for b in range(1000)}
    assert not first & {batch_seed(1, b) for b in range(1000)}
    with pytest.raises(ValueError, match="draw index"):
        batch_seed(1, 1_000_000)

    class Noise:  # a stand-in whose draws are its seed's noise, (n, length) ids from a 10^6-token vocabulary
        def generate(self, n, length, sampler=None, seed=None, prompt=None):
            tokens = torch.randint(0, 1_000_000, (n, length), generator=torch.Generator().manual_seed(seed))
            return SimpleNamespace(tokens=tokens, nfe=1)

    zero, _ = generate_in_batches(Noise(), 8, L, None, seed=0, batch=2)
    one, _ = generate_in_batches(Noise(), 8, L, None, seed=1, batch=1)
    rows_of = lambda tokens: {tuple(r.tolist()) for r in tokens}  # noqa: E731
    assert len(rows_of(zero)) == 8 and not rows_of(zero) & rows_of(one)  # (seed + index: rows 1, 2 … of seed 1 were seed 0's)
