"""Your own text as a token corpus (``--data=text``): local files or folders, a character, locally trained BPE
or ``transformers`` tokenizer, packed into a stream or one document per row.

Documents: ``documents="file"`` (each file is one), ``"paragraph"`` (blank-line separated) or ``"line"`` (each
non-blank line). Every document ends with EOS (``<|endoftext|>``, or the tokenizer's own EOS token).

Packing, for documents d_1 ... d_n and rows of L = ``seq_len`` ids:

- ``"stream"``: the stream ``d_1 EOS d_2 EOS ... d_n EOS`` is cut into ``floor(N / L)`` non-overlapping rows; its
  first ``1 - val_fraction`` trains, the rest validates (a row may hold the end of one document and the start of the next);
- ``"document"``: every row holds one document only: ``d EOS`` followed by fill (EOS again, or a PAD token with
  ``fill="pad"``) up to L; a document longer than L - 1 ids continues on the next row(s). The last ``val_fraction`` of
  the documents validate. The fill is part of what the model learns (it learns to end a document).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from flowzoo.data.base import TokenDataModule
from flowzoo.data.text import (
    BPETokenizer,
    CharTokenizer,
    cache_root,
    decode_rows,
    pack,
    split_stream,
    word_metrics,
    words,
)
from flowzoo.errors import DataError
from flowzoo.registry import register

DOCUMENT_MODES = ("file", "paragraph", "line")
PACKINGS = ("stream", "document")
FILLS = ("eos", "pad")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _log(message: str) -> None:
    print(f"flowzoo: {message}", file=sys.stderr, flush=True)


def _choose(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DataError(f"unknown {option} {value!r}; choose one of: {', '.join(choices)}")
    return value


# --- reading ------------------------------------------------------------------------------------


def list_files(entries: list[str], pattern: str = "*.txt") -> list[Path]:
    """The files named in ``entries``, a folder standing for its files matching ``pattern`` (recursively, sorted)."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"the folder {entry!r} holds no files matching {pattern!r} (set --data.pattern, e.g. '*.md')")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(f"cannot read {entry!r}: no such file or folder")
    return out


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 text with a BOM dropped and line endings normalised to ``\\n``; binary or non-UTF-8 files are refused."""
    if b"\x00" in raw[:8192]:
        raise DataError(f"{name} looks binary (it holds NUL bytes); give plain text files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{name} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {name} > converted.txt"
        ) from None
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def split_documents(text: str, mode: str) -> list[str]:
    """The documents of one file's text: the file, its blank-line separated paragraphs, or its non-blank lines."""
    if mode == "file":
        pieces = [text]
    elif mode == "paragraph":
        pieces = re.split(r"\n(?:[ \t]*\n)+", text)
    else:
        pieces = text.split("\n")
    return [p.strip("\n").rstrip() for p in pieces if p.strip()]


# --- tokenizers ---------------------------------------------------------------------------------


class TransformersTokenizer:
    """A ``transformers`` tokenizer (a local save_pretrained folder, or a name in the Hugging Face cache) behind the
    interface of :class:`CharTokenizer`/:class:`BPETokenizer`."""

    def __init__(self, name: str, cache_dir: str | None = None, eos: bool = True, pad: bool = False) -> None:
        from transformers import AutoTokenizer

        local = Path(name).expanduser()
        if local.exists() and not local.is_dir():
            raise DataError(f"tokenizer {name!r} is a file; give the folder written by save_pretrained (with tokenizer.json), or char / bpe")
        try:
            tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, cache_dir=cache_dir)
        except Exception as err:  # OSError, ValueError, Hub errors: all mean "cannot get it"
            where = f"the folder {name!r} holds no loadable tokenizer" if local.is_dir() else (
                "it is not a local folder, and not in the Hugging Face cache (downloads are off with HF_HUB_OFFLINE=1)"
            )
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise DataError(f"cannot load tokenizer {name!r}: {where}; use char, bpe or a local tokenizer folder ({type(err).__name__}: {first})") from None
        if not getattr(tok, "is_fast", False):
            raise DataError(f"tokenizer {name!r} has no fast (tokenizers) version; flowzoo needs one to save it with the model")
        tok.model_max_length = int(1e12)  # rows are cut here; silences "sequence too long"
        if eos and tok.eos_token_id is None:
            if tok.sep_token_id is not None:
                tok.eos_token = tok.sep_token
            else:
                tok.add_special_tokens({"eos_token": EOS_TOKEN})
        if pad and (tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id):
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
        self.name, self.tok = name, tok

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.convert_tokens_to_ids(token)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: list[str], batch: int = 1000) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(texts), batch):
            out.extend(self.tok(texts[i : i + batch], add_special_tokens=False)["input_ids"])
        return out

    def to_tokenizers(self):
        return self.tok.backend_tokenizer

    def save(self, directory: str | os.PathLike) -> list[str]:
        return sorted({Path(f).name for f in self.tok.save_pretrained(str(directory))})


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids (BPE: every line of every text in one parallel ``encode_batch``, regrouped)."""
    if isinstance(tokenizer, TransformersTokenizer):
        return tokenizer.encode_many(texts)
    if isinstance(tokenizer, BPETokenizer):
        lines = [t.splitlines(keepends=True) for t in texts]
        flat = tokenizer.tokenizer.encode_batch([line for ls in lines for line in ls], add_special_tokens=False)
        out, i = [], 0
        for ls in lines:
            out.append([j for enc in flat[i : i + len(ls)] for j in enc.ids])
            i += len(ls)
        return out
    return [tokenizer.encode(t) for t in texts]


# --- the data module --------------------------------------------------------------------------


@register("data", "text")
class TextData(TokenDataModule):
    """Your own text: local files or folders; char, local BPE or transformers tokenizer; packed or one document per row."""

    uses_eos = True  # every document ends with EOS (ShakespeareData: one corpus, no special tokens)

    def __init__(
        self,
        files: str | list[str] | None = None,
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
        documents: str = "file",
        packing: str = "stream",
        fill: str = "eos",
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        pattern: str = "*.txt",
        word_validity: bool = True,
        metric: str | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        """``files``: text files or folders (their ``pattern`` files); ``tokenizer``: char, bpe, or a transformers
        tokenizer folder/name; ``documents``: file, paragraph or line; ``packing``: stream or document; ``fill``: what
        follows a short document's EOS with document packing (eos or pad); ``word_validity``: score generated words
        against the corpus's (false for text without words: reported as not applicable); ``metric``: your own figures,
        package.module:function from decoded samples to named numbers."""
        super().__init__(seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, metric=metric)
        if files is None or (isinstance(files, (list, tuple)) and not files) or (isinstance(files, str) and not files.strip()):
            raise DataError("give the text to train on: --data.files=corpus.txt (a file or a folder; several as [a.txt,notes/])")
        self.files = [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
        self.pattern = pattern
        self._configure(tokenizer, bpe_vocab_size, _choose("documents", documents, DOCUMENT_MODES), packing, fill, val_fraction, word_validity, cache_dir)

    def _configure(self, tokenizer, bpe_vocab_size, documents, packing, fill, val_fraction, word_validity, cache_dir) -> None:
        if not tokenizer:
            raise DataError("tokenizer is empty; use char, bpe, or a transformers tokenizer folder")
        if tokenizer == "bpe" and bpe_vocab_size < 257 + 2:
            raise DataError(f"bpe_vocab_size must exceed the 256 byte symbols (+ special tokens), got {bpe_vocab_size}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        self.packing = _choose("packing", packing, PACKINGS)
        self.fill = _choose("fill", fill, FILLS)
        if self.fill == "pad" and self.packing != "document":
            raise DataError("fill=pad applies to packing=document (a packed stream has no padding); set --data.packing=document")
        self.tokenizer_kind, self.bpe_vocab_size, self.documents = tokenizer, bpe_vocab_size, documents
        self.val_fraction, self.word_validity, self.cache_dir = val_fraction, word_validity, cache_dir
        self._tokenizer = None
        self._portable = None
        self._texts: list[tuple[str, bytes]] | None = None
        self._docs: list[str] | None = None
        self._vocabulary: frozenset[str] | None = None
        self._digest: str | None = None

    # --- where things live --------------------------------------------------------
    def _raw_files(self) -> list[tuple[str, bytes]]:
        """(name, bytes) of every file, read once."""
        if self._texts is None:
            out = []
            for path in list_files(self.files, self.pattern):
                try:
                    out.append((str(path), path.read_bytes()))
                except OSError as err:
                    raise DataError(f"cannot read text file {str(path)!r}: {err.strerror or err}") from None
            self._texts = out
        return self._texts

    def _content_digest(self) -> str:
        """A digest of the files' contents: edited files get a fresh cache folder, moved ones keep theirs."""
        if self._digest is None:
            digest = hashlib.sha256()
            for _, raw in self._raw_files():
                digest.update(hashlib.sha256(raw).digest())
            self._digest = digest.hexdigest()[:16]
        return self._digest

    @property
    def data_dir(self) -> Path:
        return cache_root(self.cache_dir) / "text" / self._content_digest()

    @property
    def special_tokens(self) -> list[str]:
        if not self.uses_eos:
            return []
        return [EOS_TOKEN] + ([PAD_TOKEN] if self.fill == "pad" else [])

    @property
    def tokenizer_dir(self) -> Path:
        """Where a char/BPE tokenizer trained on these files (and the token ids) are cached. A character set depends
        on the documents (lines hold no newline), so char tokenizers are kept per mode; a byte-level BPE encodes any text."""
        if self.tokenizer_kind == "char":
            key = f"char-{self.documents}"
        elif self.tokenizer_kind == "bpe":
            key = f"bpe-{self.bpe_vocab_size}"
        else:
            key = "hf-" + hashlib.sha256(self.tokenizer.to_tokenizers().to_str().encode()).hexdigest()[:16]
        return self.data_dir / (key + ("-pad" if self.fill == "pad" else ""))

    # --- documents, tokenizer, ids ------------------------------------------------
    def document_texts(self) -> list[str]:
        """Every document's text, in file order."""
        if self._docs is None:
            self._content_digest()  # before the raw bytes are let go
            docs = [d for name, raw in self._raw_files() for d in split_documents(decode_text(raw, name), self.documents)]
            if not docs:
                raise DataError(f"the corpus is empty: no text in {', '.join(self.files)}")
            self._docs, self._texts = docs, None
        return self._docs

    @property
    def tokenizer(self):
        """The tokenizer: a transformers one by name or folder, or char/BPE loaded from the cache or trained on the files."""
        if self._tokenizer is None:
            kind = self.tokenizer_kind
            if kind not in ("char", "bpe"):
                self._tokenizer = TransformersTokenizer(kind, self.cache_dir, eos=self.uses_eos, pad=self.fill == "pad")
                return self._tokenizer
            cls = CharTokenizer if kind == "char" else BPETokenizer
            directory = self.tokenizer_dir
            if (directory / cls.file_name).exists():
                self._tokenizer = cls.load(directory)
            else:
                start = time.perf_counter()
                docs = self.document_texts()
                if cls is CharTokenizer:
                    tok = CharTokenizer.train("".join(docs), self.special_tokens)
                else:
                    tok = BPETokenizer.train((line for d in docs for line in d.splitlines(keepends=True)), self.bpe_vocab_size, self.special_tokens)
                tok.save(directory)
                _log(f"trained a {kind} tokenizer ({tok.vocab_size} ids) in {time.perf_counter() - start:.1f}s; saved in {directory}")
                self._tokenizer = tok
        return self._tokenizer

    @property
    def portable_tokenizer(self):
        """The tokenizer as a ``tokenizers.Tokenizer``: what decodes, and what checkpoints carry."""
        if self._portable is None:
            self._portable = self.tokenizer.to_tokenizers()
        return self._portable

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int | None:
        if not self.uses_eos:
            return None
        tok = self.tokenizer
        if isinstance(tok, TransformersTokenizer):
            return tok.tok.eos_token_id
        return tok.token_to_id(EOS_TOKEN)

    @property
    def fill_id(self) -> int | None:
        """What fills a document row after its EOS: EOS again, or PAD."""
        if self.fill == "eos":
            return self.eos_id
        tok = self.tokenizer
        return tok.tok.pad_token_id if isinstance(tok, TransformersTokenizer) else tok.token_to_id(PAD_TOKEN)

    def document_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, offsets): document i is ``ids[offsets[i]:offsets[i + 1]]`` (cached beside the tokenizer)."""
        path = self.tokenizer_dir / f"ids-{self.documents}.npz"
        if path.exists():
            with np.load(path) as saved:
                return saved["ids"], saved["offsets"]
        encoded = encode_many(self.tokenizer, self.document_texts())
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(e) for e in encoded])
        ids = np.fromiter((i for e in encoded for i in e), dtype=np.int32 if self.vocab_size > 32767 else np.int16, count=int(offsets[-1]))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=ids, offsets=offsets)
        os.replace(tmp, path)
        return ids, offsets

    def token_stream(self) -> np.ndarray:
        """``d_1 EOS d_2 EOS ...`` (no EOS without one)."""
        ids, offsets = self.document_ids()
        eos = self.eos_id
        if eos is None:
            return ids
        out = np.empty(len(ids) + len(offsets) - 1, dtype=np.int64)
        positions = offsets[1:] + np.arange(1, len(offsets))  # where each document's EOS lands
        mask = np.ones(len(out), dtype=bool)
        mask[positions - 1] = False
        out[mask], out[~mask] = ids, eos
        return out

    def document_rows(self, first: int, last: int) -> np.ndarray:
        """Rows of documents ``first`` .. ``last - 1``: ``d EOS fill...``, a long document over several rows.  # (R, L)"""
        ids, offsets = self.document_ids()
        L, eos, fill = self.seq_len, self.eos_id, self.fill_id
        rows = []
        for i in range(first, last):
            doc = np.append(ids[offsets[i] : offsets[i + 1]].astype(np.int64), eos)
            n = -(-len(doc) // L)
            padded = np.full(n * L, fill, dtype=np.int64)
            padded[: len(doc)] = doc
            rows.append(padded.reshape(n, L))
        return np.concatenate(rows) if rows else np.zeros((0, L), dtype=np.int64)

    # --- the contract -------------------------------------------------------------
    def build_splits(self):
        if self.packing == "stream":
            train, val = split_stream(self.token_stream(), self.val_fraction, self.seq_len)
            train, val = pack(train, self.seq_len), pack(val, self.seq_len)
        else:
            n = len(self.document_ids()[1]) - 1
            if n < 2:
                raise DataError(
                    f"packing=document needs at least 2 documents (one to validate), but {', '.join(self.files)} give {n}; "
                    "use documents=line or paragraph, more files, or packing=stream"
                )
            n_val = min(n - 1, max(1, int(round(n * self.val_fraction))))
            train, val = self.document_rows(0, n - n_val), self.document_rows(n - n_val, n)
        return {
            "train": datasets.Dataset.from_dict({"input_ids": train}),
            "validation": datasets.Dataset.from_dict({"input_ids": val}),
        }

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Text of each row; EOS (and any special token) written as its text, a trailing run of them once."""
        tokens = torch.as_tensor(tokens)
        return decode_rows(self.portable_tokenizer, tokens.reshape(-1, tokens.shape[-1]).tolist())  # (B, L); one row if (L,)

    def decode_raw(self, tokens: torch.Tensor) -> list[str]:
        """Every id of each row, each special token written as its text (the trailing run too, not once)."""
        tokens = torch.as_tensor(tokens)
        return self.portable_tokenizer.decode_batch(tokens.reshape(-1, tokens.shape[-1]).tolist(), skip_special_tokens=False)

    def save_tokenizer(self, directory) -> list[str]:
        """Write the tokenizer into ``directory`` (``tokenizer.json``; a transformers tokenizer's own files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.tokenizer, TransformersTokenizer):
            return self.tokenizer.save(directory)
        self.portable_tokenizer.save(str(directory / "tokenizer.json"))
        return ["tokenizer.json"]

    @property
    def vocabulary(self) -> frozenset[str]:
        """The corpus's words (split on whitespace, punctuation stripped, lowercased)."""
        if self._vocabulary is None:
            self._vocabulary = frozenset(w for d in self.document_texts() for w in words(d))
        return self._vocabulary

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float | None]:
        """Word figures (:func:`flowzoo.data.text.word_metrics`), a special token counting as a word boundary;
        ``word_validity`` None (not applicable) when ``word_validity=False``."""
        if not self.word_validity:
            return {"word_validity": None}
        tok = self.portable_tokenizer
        marks = [tok.id_to_token(i) for i in sorted({self.eos_id, self.fill_id} - {None})]
        texts = self.decode(tokens)
        for mark in marks:
            texts = [t.replace(mark, "\n") for t in texts]
        if self.packing == "document":
            texts = ["\n" + t for t in texts]  # a row starts with its document: its first word is whole
        return word_metrics(texts, self.vocabulary, drop_edges=True)

    def __repr__(self) -> str:
        return f"TextData({self.files}, tokenizer={self.tokenizer_kind}, documents={self.documents}, packing={self.packing}, seq_len={self.seq_len})"
