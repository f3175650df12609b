"""Your own text (``--data=text``): documents, tokenizers, packing, the tokenizer inside checkpoints, one sample
per line in ``sample --output``, a data metric by import path, word validity of empty output."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from flowzoo import registry
from flowzoo.checkpoints import load_checkpoint
from flowzoo.cli import main
from flowzoo.data.local_text import EOS_TOKEN, PAD_TOKEN, TextData, split_documents
from flowzoo.data.text import BPETokenizer, word_metrics
from flowzoo.errors import DataError
from flowzoo.sample_io import escape_line, read_samples, unescape_line
from helpers import TINY_NETWORK

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sonnets_excerpt.txt"
LINES = [line.rstrip() for line in FIXTURE.read_text().splitlines() if len(line.split()) >= 4 and "GUTENBERG" not in line.upper()]
TINY = list(TINY_NETWORK)


@pytest.fixture
def lines_file(tmp_path):
    path = tmp_path / "corpus" / "lines.txt"
    path.parent.mkdir()
    path.write_text("\n".join(LINES) + "\n")
    return path


def text_data(tmp_path, files, **kw):
    kw.setdefault("seq_len", 32)
    return TextData(files=files, cache_dir=str(tmp_path / "cache"), **kw)


# --- the module ------------------------------------------------------------------------------------


def test_text_is_a_registered_documented_data_module():
    assert registry.get("data", "text") is TextData
    assert "own" in registry.describe().lower() or "local files" in registry.describe()


def test_documents_by_file_paragraph_and_line():
    text = "one two\nthree\n\n  \nfour five\n"
    assert split_documents(text, "file") == ["one two\nthree\n\n  \nfour five"]
    assert split_documents(text, "paragraph") == ["one two\nthree", "four five"]
    assert split_documents(text, "line") == ["one two", "three", "four five"]


def test_one_line_per_row_with_eos_fill(tmp_path, lines_file):
    data = text_data(tmp_path, str(lines_file), documents="line", packing="document", seq_len=64, val_fraction=0.1)
    eos = data.eos_id
    assert data.tokenizer.symbols[eos] == EOS_TOKEN and data.vocab_size == len(set("".join(LINES))) + 1
    train, val = data.splits["train"][:]["input_ids"], data.splits["validation"][:]["input_ids"]
    n_val = round(len(LINES) * 0.1)
    assert len(train) == len(LINES) - n_val and len(val) == n_val  # every line is one row (all shorter than 63)
    for row, line in zip(train, LINES):
        ids = data.tokenizer.encode(line)
        assert row[: len(ids)].tolist() == ids and (row[len(ids):] == eos).all()  # the line, then EOS to the end
    assert data.decode(train[:2]) == [LINES[0] + EOS_TOKEN, LINES[1] + EOS_TOKEN]  # the fill is written once
    # decoded text encodes back (a judge re-encodes samples): the EOS text is the EOS id, as in tokenizers
    assert data.tokenizer.encode(LINES[0] + EOS_TOKEN) == train[0, : len(LINES[0]) + 1].tolist()
    assert data.portable_tokenizer.encode(LINES[0] + EOS_TOKEN).ids == data.tokenizer.encode(LINES[0] + EOS_TOKEN)


def test_pad_fill_and_long_documents_continue_on_the_next_row(tmp_path, lines_file):
    data = text_data(tmp_path, str(lines_file), documents="line", packing="document", fill="pad", seq_len=16)
    eos, pad = data.eos_id, data.fill_id
    assert pad != eos and data.tokenizer.symbols[pad] == PAD_TOKEN
    rows = data.document_rows(0, 1)  # the first line, 42 characters, over 3 rows of 16
    ids = data.tokenizer.encode(LINES[0])
    assert rows.shape == (-(-(len(ids) + 1) // 16), 16)
    flat = rows.flatten().tolist()
    assert flat[: len(ids)] == ids and flat[len(ids)] == eos and set(flat[len(ids) + 1 :]) == {pad}
    with pytest.raises(DataError, match="fill=pad applies to packing=document"):
        text_data(tmp_path, str(lines_file), fill="pad")


def test_stream_packing_over_a_folder_separates_documents_with_eos(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha beta gamma delta\n" * 20)
    (folder / "sub" / "b.txt").write_text("epsilon zeta eta theta\n" * 20)
    (folder / "skip.md").write_text("not matched by *.txt")
    data = text_data(tmp_path, str(folder), seq_len=8, val_fraction=0.2)
    assert [Path(n).name for n, _ in data._raw_files()] == ["a.txt", "b.txt"]
    stream = data.token_stream()
    a, b = ("alpha beta gamma delta\n" * 20).strip("\n"), ("epsilon zeta eta theta\n" * 20).strip("\n")
    assert stream.tolist() == data.tokenizer.encode(a) + [data.eos_id] + data.tokenizer.encode(b) + [data.eos_id]
    train = data.splits["train"][:]["input_ids"]
    assert train.shape[1] == 8 and train.flatten().tolist() == stream[: train.numel()].tolist()


def test_bpe_trained_locally_has_eos_and_is_cached(tmp_path, lines_file, monkeypatch):
    data = text_data(tmp_path, [str(lines_file)], tokenizer="bpe", bpe_vocab_size=300, documents="line", packing="document", seq_len=64)
    assert data.tokenizer.token_to_id(EOS_TOKEN) == data.eos_id is not None
    row = data.splits["train"][:1]["input_ids"]
    assert data.decode(row) == [LINES[0] + EOS_TOKEN]
    monkeypatch.setattr(BPETokenizer, "train", staticmethod(lambda *a, **k: pytest.fail("retrained")))
    again = text_data(tmp_path, [str(lines_file)], tokenizer="bpe", bpe_vocab_size=300, documents="line", packing="document", seq_len=64)
    assert again.decode(row) == data.decode(row)


def _save_hf_tokenizer(folder, **specials):
    tok = BPETokenizer.train([line + "\n" for line in LINES], 300, special_tokens=list(specials.values()))
    tok.to_transformers(**specials).save_pretrained(folder)
    return folder


def test_a_local_transformers_tokenizer(tmp_path, lines_file):
    folder = _save_hf_tokenizer(tmp_path / "tok", eos_token="</s>")
    data = text_data(tmp_path, str(lines_file), tokenizer=str(folder), documents="line", packing="document", seq_len=64)
    assert data.eos_id == data.tokenizer.tok.convert_tokens_to_ids("</s>") and data.vocab_size == len(data.tokenizer.tok)
    assert data.decode(data.splits["train"][:1]["input_ids"]) == [LINES[0] + "</s>"]
    # a tokenizer without EOS gets one (saved with it), so documents still end
    bare = text_data(tmp_path, str(lines_file), tokenizer=str(_save_hf_tokenizer(tmp_path / "bare")), documents="line")
    assert bare.tokenizer.tok.eos_token == EOS_TOKEN and bare.vocab_size == 301
    with pytest.raises(DataError, match="not in the Hugging Face cache"):
        text_data(tmp_path, str(lines_file), tokenizer="flowzoo-test/no-such-tokenizer").vocab_size


def test_bad_files_are_refused_in_one_line(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    (tmp_path / "empty").mkdir()
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    cases = [(latin, "not UTF-8 text.*iconv"), (binary, "looks binary"), (tmp_path / "empty", "holds no files matching"),
             (tmp_path / "nowhere.txt", "no such file or folder"), (blank, "corpus is empty")]
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            text_data(tmp_path, str(path)).vocab_size
    with pytest.raises(DataError, match="--data.files"):
        TextData()
    with pytest.raises(DataError, match="file, paragraph, line"):
        text_data(tmp_path, str(latin), documents="sentence")
    one = tmp_path / "one.txt"
    one.write_text(" ".join(LINES))
    with pytest.raises(DataError, match="at least 2 documents"):
        text_data(tmp_path, str(one), packing="document").splits


# --- word validity ------------------------------------------------------------------------------------


def test_empty_samples_count_as_failures_and_no_reference_is_not_applicable():
    vocab = frozenset({"thy", "rose"})
    near_empty = [" thy rose "] + ["   "] * 9  # one sample of 2 valid words, 9 without a word
    m = word_metrics(near_empty, vocab)
    assert m["word_validity"] == pytest.approx(2 / 11) and m["num_words"] == 2 and m["empty_samples"] == pytest.approx(0.9)
    assert word_metrics([" thy rose "], frozenset())["word_validity"] is None  # no words to check against


def test_word_validity_off_is_reported_not_applicable(tmp_path, lines_file):
    data = text_data(tmp_path, str(lines_file), documents="line", packing="document", word_validity=False)
    assert data.sample_metrics(data.splits["validation"][:2]["input_ids"]) == {"word_validity": None}
    on = text_data(tmp_path, str(lines_file), documents="line", packing="document")
    assert on.sample_metrics(on.splits["validation"][:2]["input_ids"])["word_validity"] == 1.0  # whole lines: valid


# --- a metric by import path -----------------------------------------------------------------------------

METRIC_MODULE = '''
def length(texts):
    return {"mean_chars": sum(len(t) for t in texts) / len(texts), "rhymes": None}

not_a_function = 3

def wrong(texts):
    return [1.0]
'''


@pytest.fixture
def metric_module(tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text(METRIC_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mymetrics"
    sys.modules.pop("mymetrics", None)


def test_metric_by_import_path(tmp_path, lines_file, metric_module):
    data = text_data(tmp_path, str(lines_file), documents="line", packing="document", metric=f"{metric_module}:length")
    rows = data.splits["validation"][:2]["input_ids"]
    figures = data.sample_metrics(rows)
    assert figures["mean_chars"] == pytest.approx(sum(map(len, data.decode(rows))) / 2) and figures["rhymes"] is None
    assert "word_validity" in figures
    assert registry.spec(data)["init_args"]["metric"] == "mymetrics:length"  # rebuilt with the model's data
    for path, message in (("mymetrics:nope", "has no 'nope'"), ("nopkg_xyz.mod:f", "cannot import"),
                          ("mymetrics:not_a_function", "not a function"), ("justaname", "import path")):
        with pytest.raises(DataError, match=message):
            text_data(tmp_path, str(lines_file), metric=path)
    wrong = text_data(tmp_path, str(lines_file), documents="line", packing="document", metric=f"{metric_module}:wrong")
    with pytest.raises(DataError, match="must return a dict"):
        wrong.sample_metrics(rows)


# --- sample --output ------------------------------------------------------------------------------------


def test_escape_line_keeps_one_sample_per_line():
    texts = ["two\nlines", "back\\slash \\n literal", "cr\r and \u2028 sep", EOS_TOKEN + "end\n"]
    escaped = [escape_line(t) for t in texts]
    assert all(len(e.splitlines()) == 1 for e in escaped)
    assert escaped[0] == "two\\nlines" and [unescape_line(e) for e in escaped] == texts


# --- end to end: fit, move the files, sample ----------------------------------------------------------------


def test_fit_on_own_text_then_sample_and_publish_after_the_files_move(tmp_path, lines_file, metric_module, capsys):
    root = tmp_path / "run"
    args = ["fit", "--data=text", f"--data.files=[{lines_file}]", "--data.documents=line", "--data.packing=document",
            "--data.seq_len=48", "--data.batch_size=8", f"--data.cache_dir={tmp_path / 'cache'}",
            f"--data.metric={metric_module}:length", *TINY, "--model.num_val_samples=2", "--model.sampler.steps=2",
            "--trainer.max_steps=2", "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false"]
    assert main(args) == 0
    ckpt = sorted(root.rglob("*.ckpt"))[-1]
    model = load_checkpoint(ckpt)
    assert model.tokenizer is not None and model.tokenizer.get_vocab_size() == model.vocab_size
    sample = ["sample", "--checkpoint", str(ckpt), "--num-samples", "6", "--show", "0"]
    capsys.readouterr()
    assert main([*sample, "--output", str(tmp_path / "before.txt")]) == 0
    before = json.loads(capsys.readouterr().out)
    assert "word_validity" in before["metrics"] and "mean_chars" in before["metrics"]

    shutil.rmtree(lines_file.parent)  # the training files move away (and the cache with its tokenizer)
    shutil.rmtree(tmp_path / "cache")
    assert main([*sample, "--output", str(tmp_path / "after.txt")]) == 0
    after = json.loads(capsys.readouterr().out)
    lines = (tmp_path / "after.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 + 1 and lines[-1] == ""  # exactly one sample per line
    assert read_samples(tmp_path / "after.txt") == read_samples(tmp_path / "before.txt")  # decoded as before, not raw ids
    assert after["metrics"]["mean_chars"] == before["metrics"]["mean_chars"]  # a text metric needs no corpus
    assert "word_validity" not in after["metrics"] and "not available" in after["note"]

    # publish with the default --eval-samples 64: the card's figures that need no corpus, the rest skipped with a note
    out = tmp_path / "to_upload"
    assert main(["publish", "--checkpoint", str(ckpt), "--repo-id", "me/own-text", "--output-dir", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowzoo: note:")]
    assert len(notes) == 1 and "not available" in notes[0] and str(lines_file) in notes[0], notes
    figures = json.loads((out / "config.json").read_text())["metrics"]
    assert figures["num_samples"] == 64 and figures["nfe"] == 2 and "mean_chars" in figures
    assert "word_validity" not in figures and "not available" in figures["note"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"mean_chars"}
    assert "Note: the data's sample figures need the training data" in card.text

    # save_pretrained of the loaded checkpoint carries the tokenizer too
    model.save_pretrained(tmp_path / "pretrained")
    assert (tmp_path / "pretrained" / "tokenizer.json").is_file()
    assert load_checkpoint(tmp_path / "pretrained").tokenizer.to_str() == model.tokenizer.to_str()


def test_an_old_checkpoint_without_a_tokenizer_still_loads(tmp_path):
    from flowzoo.checkpoints.tokenizer import CHECKPOINT_KEY
    from flowzoo.module import FlowLM

    model = FlowLM(backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}, vocab_size=8)
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict()}, tmp_path / "old.ckpt")
    assert load_checkpoint(tmp_path / "old.ckpt").tokenizer is None
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict(), CHECKPOINT_KEY: 3}, tmp_path / "bad.ckpt")
    from flowzoo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not tokenizer.json text"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_validation_logs_the_data_metric(tmp_path, lines_file, metric_module):
    import csv

    root = tmp_path / "run"
    args = ["fit", "--data=text", f"--data.files={lines_file}", "--data.documents=line", "--data.packing=document",
            "--data.seq_len=48", "--data.batch_size=8", f"--data.cache_dir={tmp_path / 'cache'}",
            f"--data.metric={metric_module}:length", *TINY, "--model.num_val_samples=2", "--model.sampler.steps=2",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}"]
    assert main(args) == 0
    (metrics_csv,) = root.rglob("metrics.csv")
    logged = {k for row in csv.DictReader(metrics_csv.open()) for k, v in row.items() if v}
    assert {"val/sample_mean_chars", "val/sample_word_validity", "val/sample_num_words"} <= logged
    assert "val/sample_rhymes" not in logged  # not applicable: not logged as a number


def test_benchmark_table_shows_a_data_metric_and_not_applicable():
    from flowzoo.benchmark import headline, load_config, markdown

    def row(sampler, steps, validity):
        return {"model": "m", "sampler_name": sampler, "steps": steps, "nfe": steps, "seconds_per_batch": 0.01 * steps,
                "metrics": {"entropy": 2.0, "word_validity": validity, "num_words": 10.0, "mean_chars": 5.0},
                "tokens_per_second": 1.0, "peak_memory_mib": 1.0, "memory_method": "m", "example": "x"}

    config = load_config(None, models=[{"checkpoint": "x"}])
    rows = [row("flow_map", 1, None), row("ancestral", 8, None)]
    results = {"name": "t", "rows": rows, "config": config, "length": 8, "judge": None, "models": {},
               "environment": {"device": "cpu", "threads": 1, "torch": "x", "flowzoo": "y"}}
    results["headline"] = headline(results, config)  # word validity n/a everywhere: the headline falls back to entropy
    assert results["headline"]["metric"] == "entropy"
    table = markdown(results)
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "word_validity" in header and "num_words" in header and "mean_chars" in header
    assert "| n/a |" in table


def test_fit_without_files_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the refused fit may have made its run folder: not in the checkout
    assert main(["fit", "--data=text", "--trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "--data.files=" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_lightning_checkpoint_carries_its_data_tokenizer(tmp_path):
    """Not only text: a markov checkpoint carries its word list, and the loaded model decodes with it."""
    from flowzoo.data.markov import MarkovData

    root = tmp_path / "run"
    data_args = ["--data.num_states=12", "--data.num_train=16", "--data.num_val=8", "--data.seq_len=6", "--data.batch_size=8"]
    assert main(["fit", *TINY, *data_args, "--model.num_val_samples=0", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                 f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", "--trainer.logger=false"]) == 0
    model = load_checkpoint(sorted(root.rglob("*.ckpt"))[-1])
    data = MarkovData(num_states=12, num_train=16, num_val=8, seq_len=6)
    ids = model.generate(2, 6, seed=0).tokens
    assert model.tokenizer.decode_batch(ids.tolist()) == data.decode(ids)


def test_the_data_modules_take_a_metric():
    import inspect

    for name in ("markov", "mirror", "shakespeare", "hub", "text"):
        assert "metric" in inspect.signature(registry.get("data", name)).parameters, f"data module {name!r} takes no metric"


def test_a_cached_char_tokenizer_fits_every_document_mode(tmp_path, lines_file):
    """Lines have no newline character, files do: the tokenizer cached for one mode must encode the other."""
    lines = text_data(tmp_path, str(lines_file), documents="line")
    assert lines.vocab_size > 0 and len(lines.splits["train"]) > 0
    whole = text_data(tmp_path, str(lines_file), documents="file")
    assert any("\n" in text for text in whole.decode(whole.splits["train"][:]["input_ids"]))
