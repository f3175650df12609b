"""Shared text helpers: a character tokenizer, a locally trained byte-level BPE, packing, word validity, decoding.

Packing cuts a token stream ``ids`` (length N) into ``floor(N / L)`` non-overlapping rows of
``L = seq_len`` tokens; word validity is ``|{w in W : w in V}| / (|W| + n_empty)`` for the generated
words W, the corpus vocabulary V (words split on whitespace, punctuation stripped, lowercased) and the
n_empty samples without a whole word.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from flowzoo.errors import DataError

TOKENIZER_KINDS = ("char", "bpe")


def check_tokenizer_kind(kind: str) -> str:
    if kind not in TOKENIZER_KINDS:
        raise DataError(f"unknown tokenizer {kind!r}; choose one of: {', '.join(TOKENIZER_KINDS)}")
    return kind


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where downloaded corpora and trained tokenizers live: ``cache_dir``, ``$FLOWZOO_CACHE`` or ``~/.cache/flowzoo``."""
    root = cache_dir or os.environ.get("FLOWZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flowzoo")
    return Path(root)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


# --- tokenizers -------------------------------------------------------------------------


class CharTokenizer:
    """One id per distinct character of the corpus, in sorted order: ``encode(s)[i] = index(s[i])``;
    special tokens (e.g. ``<|endoftext|>``) take the ids after the characters."""

    file_name = "char_tokenizer.json"

    def __init__(self, chars: Sequence[str], special_tokens: Sequence[str] = ()) -> None:
        if len(chars) < 2:
            raise DataError(f"a character tokenizer needs at least 2 distinct characters, got {len(chars)}")
        self.chars, self.special_tokens = list(chars), list(special_tokens)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.symbols = self.chars + self.special_tokens  # id -> text

    @classmethod
    def train(cls, text: str, special_tokens: Sequence[str] = ()) -> "CharTokenizer":
        return cls(sorted(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def token_to_id(self, token: str) -> int | None:
        return len(self.chars) + self.special_tokens.index(token) if token in self.special_tokens else None

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``'s characters; a special token's text (``<|endoftext|>``) is its own id, as in ``tokenizers``."""
        if self.special_tokens:
            pieces = re.split("(" + "|".join(map(re.escape, self.special_tokens)) + ")", text)
            return [i for k, piece in enumerate(pieces) for i in ([self.token_to_id(piece)] if k % 2 else self._chars(piece))]
        return self._chars(text)

    def _chars(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[int(i)] for i in ids)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / self.file_name
        data = {"type": "char", "chars": self.chars}
        if self.special_tokens:
            data["special_tokens"] = self.special_tokens
        write_atomic(path, json.dumps(data, ensure_ascii=False))
        return path

    def to_tokenizers(self):
        """The same map as a ``tokenizers.Tokenizer`` (every character its own token, decoded by fusing;
        the special tokens registered as such)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self.symbols)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        if self.special_tokens:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens])
        return tok

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CharTokenizer":
        path = Path(directory) / cls.file_name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read the character tokenizer {path}: {err}") from None
        if data.get("type") != "char":
            raise DataError(f"{path} is not a character tokenizer")
        return cls(data["chars"], data.get("special_tokens", ()))


class BPETokenizer:
    """A byte-level BPE (``tokenizers``) trained on the corpus; lossless: ``decode(encode(s)) == s``."""

    file_name = "tokenizer.json"

    def __init__(self, tokenizer) -> None:  # a tokenizers.Tokenizer
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ()) -> "BPETokenizer":
        """Merge the most frequent byte pairs until ``vocab_size`` ids (256 bytes + merges + specials)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + len(special_tokens):
            raise DataError(f"a byte-level BPE needs vocab_size above 256 (+ special tokens), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(lines, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Encoded line by line (newlines kept), which is exact and lets ``tokenizers`` work in parallel."""
        lines = text.splitlines(keepends=True)
        return [i for enc in self.tokenizer.encode_batch(lines, add_special_tokens=False) for i in enc.ids]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / self.file_name
        write_atomic(path, self.tokenizer.to_str())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = Path(directory) / cls.file_name
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises plain Exception on bad files
            raise DataError(f"cannot read the BPE tokenizer {path}: {err}") from None

    def to_tokenizers(self):
        return self.tokenizer

    def to_transformers(self, **special_tokens: str):
        """The same tokenizer as a ``transformers.PreTrainedTokenizerFast`` (e.g. to ``save_pretrained``)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.tokenizer, **special_tokens)


# --- packing ----------------------------------------------------------------------------


def pack(ids: Sequence[int] | np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping rows of ``seq_len`` consecutive ids; the incomplete tail is dropped.  # (N // L, L)"""
    ids = np.asarray(ids, dtype=np.int64)
    rows = len(ids) // seq_len
    return ids[: rows * seq_len].reshape(rows, seq_len)


def split_stream(ids: np.ndarray, val_fraction: float, seq_len: int, what: str = "corpus") -> tuple[np.ndarray, np.ndarray]:
    """The first ``1 - val_fraction`` of the stream for training, the rest for validation; each needs ``seq_len`` ids."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    n = len(ids)
    n_val = int(round(n * val_fraction))
    if n - n_val < seq_len or n_val < seq_len:
        need = int(np.ceil(seq_len / min(val_fraction, 1.0 - val_fraction)))
        raise DataError(
            f"the {what} is too short: {n} tokens give {n - n_val} for training and {n_val} for validation "
            f"(val_fraction={val_fraction}), but each split needs at least seq_len={seq_len}; "
            f"use at least {need} tokens or a smaller seq_len"
        )
    return ids[: n - n_val], ids[n - n_val :]


# --- words ------------------------------------------------------------------------------

_WORD_SPLIT = re.compile(r"\s+|--+")  # whitespace, and the "--" dash of Gutenberg texts
_PUNCT = string.punctuation + "\u2018\u2019\u201c\u201d\u2014\u2013"


def words(text: str, drop_edges: bool = False) -> list[str]:
    """Lowercased words with leading/trailing punctuation stripped; empty ones dropped.

    With ``drop_edges`` a word touching the start or end of ``text`` (no whitespace before or
    after it) is left out: a fixed-length sample cuts words there, so they are not whole words.
    """
    pieces = _WORD_SPLIT.split(text)
    if drop_edges:
        if pieces and text[:1] and not text[:1].isspace():
            pieces = pieces[1:]
        if pieces and text[-1:] and not text[-1:].isspace():
            pieces = pieces[:-1]
    out = []
    for piece in pieces:
        w = piece.strip(_PUNCT).lower()
        if w:
            out.append(w)
    return out


def word_vocabulary(text: str) -> frozenset[str]:
    return frozenset(words(text))


def word_metrics(texts: Iterable[str], vocabulary: frozenset[str] | set[str], drop_edges: bool = True) -> dict[str, float | None]:
    """Word figures of generated texts against the corpus's ``vocabulary`` (its words).

    ``word_validity = |{w in W : w in V}| / (|W| + n_empty)``: the share of generated words W found in V, where
    each sample without a whole word counts as one failure (so near-empty output cannot score high);
    ``num_words = |W|``, ``empty_samples = n_empty / n``, ``unique_words``: distinct / total words.
    With no reference words (an empty ``vocabulary``) or no samples, word validity does not apply: None.
    """
    texts = list(texts)
    per_sample = [words(text, drop_edges=drop_edges) for text in texts]
    generated = [w for ws in per_sample for w in ws]
    empty = sum(not ws for ws in per_sample)
    if not vocabulary or not texts:
        return {"word_validity": None, "unique_words": None, "num_words": float(len(generated)), "empty_samples": None}
    valid = sum(w in vocabulary for w in generated)
    return {
        "word_validity": valid / (len(generated) + empty),
        "unique_words": len(set(generated)) / len(generated) if generated else 0.0,
        "num_words": float(len(generated)),
        "empty_samples": empty / len(texts),
    }


# --- decoding -----------------------------------------------------------------------------


def special_ids(tokenizer) -> set[int]:
    """Ids of a ``tokenizers.Tokenizer``'s special tokens (EOS, PAD, ...)."""
    return {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}


def decode_rows(tokenizer, rows: Iterable[Sequence[int]]) -> list[str]:
    """Each row of ids as text through a ``tokenizers.Tokenizer``, special tokens written as their text
    (``<|endoftext|>`` where a document ends); a trailing run of special tokens (the EOS and the fill after a
    short document) is written once."""
    special = special_ids(tokenizer)
    out = []
    for row in rows:
        row = [int(i) for i in row]
        end = len(row)
        while end > 0 and row[end - 1] in special:
            end -= 1
        out.append(tokenizer.decode(row[: min(end + 1, len(row))], skip_special_tokens=False))
    return out
