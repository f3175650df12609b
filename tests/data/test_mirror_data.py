"""The long-range synthetic language: its coupling structure, an exact likelihood that sums to one and whose
entropy agrees with brute-force enumeration, metrics that see a broken pair, and a model that trains on it."""

import itertools
import math

import numpy as np
import pytest
import torch

from flowzoo.data.mirror import MirrorData, MirrorLanguage
from flowzoo.errors import DataError


@pytest.mark.parametrize("mode, expected", [("mirror", [1, 3, 5, 7]), ("copy", [4, 4, 4, 4])])
def test_coupling_distances(mode, expected):
    assert MirrorLanguage(8, mode, num_states=10).coupling_distances() == expected


@pytest.mark.parametrize("mode", ["mirror", "copy"])
def test_samples_keep_the_constraint_and_score_perfectly(mode):
    lang = MirrorLanguage(12, mode, num_states=16, seed=2)
    x = lang.sample(500, seed=1)
    h = lang.half
    if mode == "mirror":
        assert (x[:, h:] == x[:, :h][:, ::-1]).all()
    else:
        assert (x[:, h:] == x[:, :h]).all()
    m = lang.evaluate(torch.from_numpy(x))
    assert m["pair_match"] == 1.0 and m["valid_transitions"] == 1.0 and m["valid_sequences"] == 1.0
    # the data's own NLL per token estimates its entropy per token
    assert abs(m["nll_gap"]) < 0.05 * m["entropy_per_token"]


@pytest.mark.parametrize("mode", ["mirror", "copy"])
def test_likelihood_sums_to_one_and_entropy_matches_enumeration(mode):
    lang = MirrorLanguage(4, mode, num_states=10, seed=5)  # 10^4 sequences of length 4
    every = np.array(list(itertools.product(range(10), repeat=4)))
    p = np.exp(lang.log_prob(every, floor=1e-300))
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    assert entropy / 4 == pytest.approx(lang.entropy_per_token(), rel=1e-9)


def test_a_broken_pair_is_seen():
    lang = MirrorLanguage(8, "mirror", num_states=16, seed=0)
    x = torch.from_numpy(lang.sample(64, seed=3))
    broken = x.clone()
    broken[:, -1] = (broken[:, 0] + 1) % 16  # position 7 pairs with position 0
    m = lang.evaluate(broken)
    assert m["pair_match"] == pytest.approx(3 / 4)
    assert m["valid_sequences"] == 0.0
    assert m["nll"] > lang.evaluate(x)["nll"] + math.log(1e6) / 8 - 1e-9


def test_pair_match_by_distance_locates_the_broken_pairs():
    lang = MirrorLanguage(8, "mirror", num_states=16, seed=0)
    x = torch.from_numpy(lang.sample(64, seed=3))
    assert lang.pair_match_by_distance(x) == {1: 1.0, 3: 1.0, 5: 1.0, 7: 1.0}
    broken = x.clone()
    broken[:, -1] = (broken[:, 0] + 1) % 16  # position 7 pairs with position 0: 7 apart
    broken[:32, 5] = (broken[:32, 2] + 1) % 16  # position 5 pairs with 2: 3 apart, in half the rows
    by_distance = lang.pair_match_by_distance(broken)
    assert by_distance == {1: 1.0, 3: 0.5, 5: 1.0, 7: 0.0}
    assert np.mean(list(by_distance.values())) == pytest.approx(lang.evaluate(broken)["pair_match"])
    # copy mode: every pair L/2 apart
    copy = MirrorLanguage(8, "copy", num_states=16, seed=0)
    assert copy.pair_match_by_distance(torch.from_numpy(copy.sample(8, seed=1))) == {4: 1.0}


def test_held_out_rows_are_the_validation_split_and_bounded():
    data = MirrorData(seq_len=8, num_train=32, num_val=16)
    rows = data.held_out(5)
    assert rows.shape == (5, 8) and rows.dtype == torch.long
    assert torch.equal(rows, torch.stack([data.splits["validation"][i]["input_ids"] for i in range(5)]).long())
    assert data.evaluate_samples(rows)["valid_sequences"] == 1.0
    with pytest.raises(DataError, match="validation split has 16"):
        data.held_out(17)


def test_bad_settings_are_refused():
    with pytest.raises(DataError, match="even"):
        MirrorLanguage(7)
    with pytest.raises(DataError, match="choices: mirror, copy"):
        MirrorLanguage(8, "reverse")
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        MirrorLanguage(8, num_states=10).evaluate(torch.zeros(2, 6, dtype=torch.long))


def test_data_module_decodes_and_scores():
    data = MirrorData(seq_len=8, num_train=32, num_val=16, batch_size=4)
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (4, 8)
    text = data.decode(batch[:1])[0]
    left, right = text.split(" | ")
    assert left.split() == right.split()[::-1]
    assert data.evaluate_samples(batch)["valid_sequences"] == 1.0
    assert "coupled at distances 1..7" in repr(data)


def test_flow_trains_on_mirror_from_the_cli(tmp_path):
    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.cli import main

    code = main([
        "fit", "--data=mirror", "--data.num_states=12", "--data.seq_len=8", "--data.num_train=64", "--data.num_val=16", "--data.batch_size=8",
        "--model.backbone.init_args.width=32", "--model.backbone.init_args.depth=1", "--model.backbone.init_args.heads=2",
        "--model.backbone.init_args.cond_dim=32", "--model.num_val_samples=8", "--model.sampler.steps=4",
        "--trainer.max_steps=2", "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}",
    ])
    assert code == 0
    ckpt = next(tmp_path.rglob("*.ckpt"))
    model = load_checkpoint(str(ckpt))
    out = model.generate(4, 8, seed=0)
    assert out.tokens.shape == (4, 8) and int(out.tokens.max()) < 12 and model.vocab_size == 12
