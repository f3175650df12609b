"""``flowzoo benchmark`` of a model whose training files have moved: the checkpoint's own tokenizer decodes the
samples, the rows carry the figures that need no corpus (entropy, distinct, the data's ``metric`` of decoded text),
the validation loss is n/a, and one ``flowzoo: note:`` line says why (as ``flowzoo sample`` and ``publish`` do)."""

import json
import shutil
import sys

import pytest
import torch
import yaml

from flowzoo import registry
from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.cli import main
from flowzoo.data.local_text import TextData
from flowzoo.module import FlowLM

METRIC = 'def length(texts):\n    return {"mean_chars": sum(len(t) for t in texts) / len(texts)}\n'
LINES = ["the quick brown fox jumps over the dog", "a lazy cat sleeps in the warm sun all day", "birds sing at dawn"] * 8


@pytest.fixture
def moved_model(tmp_path, monkeypatch):
    """A tiny flow saved with save_pretrained (tokenizer inside) over a text file, whose file and cache are then deleted."""
    (tmp_path / "benchmetric.py").write_text(METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lines.txt").write_text("\n".join(LINES) + "\n")
    data = TextData(files=str(corpus / "lines.txt"), cache_dir=str(tmp_path / "cache"), documents="line", packing="document",
                    seq_len=16, batch_size=4, metric="benchmetric:length")
    torch.manual_seed(0)
    model = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}, vocab_size=data.vocab_size,
                   sampler={"name": "euler", "init_args": {"steps": 2}})
    model.data_spec = registry.spec(data)
    save_pretrained(model, tmp_path / "model", datamodule=data)
    shutil.rmtree(corpus)  # the training files move away, and the cache with them
    shutil.rmtree(tmp_path / "cache")
    yield tmp_path / "model", str(corpus / "lines.txt")
    sys.modules.pop("benchmetric", None)


def test_benchmark_of_a_model_whose_training_files_moved_measures_what_needs_no_corpus(moved_model, tmp_path, capsys):
    folder, corpus_file = moved_model
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"name": "moved", "output": str(out), "num_samples": 4, "batch_size": 2, "repeats": 1, "val_batches": 1,
                                      "models": [{"name": "moved", "checkpoint": str(folder), "samplers": [{"name": "euler", "steps": [1, 2]}]}]}))
    capsys.readouterr()
    assert main(["benchmark", "--config", str(config), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("flowzoo: note:")]
    assert len(notes) == 1 and "not available" in notes[0] and corpus_file in notes[0], err
    results = json.loads((out / "results.json").read_text())
    assert [(r["sampler_name"], r["steps"]) for r in results["rows"]] == [("euler", 1), ("euler", 2)]  # no reference row: no data
    for row in results["rows"]:
        assert {"entropy", "distinct", "mean_chars"} <= set(row["metrics"]) and "word_validity" not in row["metrics"]
        assert row["metrics"]["mean_chars"] > 0 and row["example"] and not row["example"][0].isdigit()  # text, not raw ids
    assert results["models"]["moved"]["validation"] is None and "not available" in results["models"]["moved"]["note"]
    md = (out / "results.md").read_text()
    assert "| moved | `" in md and "| n/a | n/a |" in md  # validation loss and bound: n/a
    assert "Note: moved: " in md and "not available" in md
