"""Text corpora by Hub name or local path, tokenized with a ``transformers`` tokenizer and packed.

Packing: the documents' ids are concatenated with a separator (EOS, else SEP) after each,
``d_1 <sep> d_2 <sep> ...``, and cut into non-overlapping blocks of ``seq_len`` ids
(per ``datasets.map`` batch of documents; each batch's incomplete tail is dropped).
Hub names (``openwebtext``, ``lm1b``, ``roneneldan/TinyStories``, ``wikitext``) need network or
the Hugging Face cache; the same code reads local ``.txt``/``.jsonl``/``.csv``/``.parquet`` files,
folders, and local tokenizer folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowzoo.data.base import TokenDataModule
from flowzoo.data.text import word_metrics, words
from flowzoo.errors import DataError
from flowzoo.registry import register

# a dataset without its own config gets the usual one
DEFAULT_CONFIGS = {"wikitext": "wikitext-103-raw-v1", "Salesforce/wikitext": "wikitext-103-raw-v1"}
_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _unreadable(err: BaseException) -> str:
    """Why ``datasets`` could not read a local file: the root cause (a UnicodeDecodeError under its wrapper)."""
    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, UnicodeDecodeError):
            return (f"it is not UTF-8 text (byte 0x{cause.object[cause.start:cause.start + 1].hex()} cannot be decoded; a binary "
                    "file, or another encoding such as latin-1: convert it first, e.g. iconv -f latin1 -t utf-8)")
        cause = cause.__cause__ or cause.__context__
    return _short(err)


def _network_hint() -> str:
    state = "HF_HUB_OFFLINE is set" if _offline() else "the Hub may be unreachable from this machine"
    return f"downloading from the Hugging Face Hub needs network ({state}) unless it is already cached"


def pack_documents(batch: dict[str, list], tokenizer, text_column: str, seq_len: int, separator: int | None) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: concatenate the batch's documents (each followed by
    ``separator``) and cut the stream into rows of ``seq_len`` ids, dropping the tail."""
    texts = [t for t in batch[text_column] if t and not t.isspace()]
    stream: list[int] = []
    if texts:
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if separator is not None:
                stream.append(separator)
    rows = len(stream) // seq_len
    return {"input_ids": [stream[i * seq_len : (i + 1) * seq_len] for i in range(rows)]}


@register("data", "hub")
class HubTextData(TokenDataModule):
    """Hub or local text corpora (openwebtext, lm1b, TinyStories, wikitext, files) with a transformers tokenizer, packed."""

    def __init__(
        self,
        dataset: str = "roneneldan/TinyStories",
        config: str | None = None,
        tokenizer: str = "gpt2",
        text_column: str = "text",
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        train_split: str = "train",
        validation_split: str | None = "validation",
        val_fraction: float = 0.01,
        max_documents: int | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        map_batch_size: int = 1000,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        metric: str | None = None,
    ) -> None:
        super().__init__(seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, metric=metric)
        if not dataset:
            raise DataError("dataset is empty; give a Hub name (e.g. roneneldan/TinyStories) or a local file or folder")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        if max_documents is not None and max_documents < 1:
            raise DataError(f"max_documents must be positive, got {max_documents}")
        if map_batch_size < 1:
            raise DataError(f"map_batch_size must be positive, got {map_batch_size}")
        self.dataset_name, self.config = dataset, config if config is not None else DEFAULT_CONFIGS.get(dataset)
        self.tokenizer_name, self.text_column, self.data_files = tokenizer, text_column, data_files
        self.train_split, self.validation_split, self.val_fraction = train_split, validation_split, val_fraction
        self.max_documents, self.map_batch_size, self.num_proc = max_documents, map_batch_size, num_proc
        self.cache_dir, self.seed = cache_dir, seed
        self._tokenizer = None
        self._raw: dict[str, Any] | None = None
        self._vocabulary: frozenset[str] | None = None

    # --- tokenizer ----------------------------------------------------------------
    @property
    def tokenizer(self):
        """``AutoTokenizer.from_pretrained(tokenizer)``: a Hub name (cached) or a local folder."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            name = self.tokenizer_name
            local = Path(name).expanduser()
            if local.exists() and not local.is_dir():
                raise DataError(f"tokenizer {name!r} is a file; give the folder written by save_pretrained (with tokenizer.json)")
            try:
                tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, cache_dir=self.cache_dir)
            except Exception as err:  # OSError, ValueError, HF errors: all mean "cannot get it"
                where = f"the local folder {name!r} holds no loadable tokenizer" if local.is_dir() else _network_hint()
                raise DataError(
                    f"cannot load tokenizer {name!r}: {where}; pass a local tokenizer folder "
                    f"(save_pretrained output) as --data.tokenizer ({_short(err)})"
                ) from None
            tok.model_max_length = int(1e12)  # we pack ourselves; silences the "sequence too long" warning
            self._tokenizer = tok
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def separator(self) -> int | None:
        """The id written after each document: EOS, else SEP, else none."""
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    # --- raw documents ------------------------------------------------------------
    def _load(self):
        import datasets

        name = self.dataset_name
        path = Path(name).expanduser()
        try:
            if path.is_file():
                builder = _BUILDERS.get(path.suffix.lower())
                if builder is None:
                    raise DataError(f"cannot tell the format of {name!r}; use one of {', '.join(sorted(_BUILDERS))}")
                if path.stat().st_size == 0:
                    raise DataError(f"the local file {name!r} is empty")
                return datasets.load_dataset(builder, data_files=str(path), cache_dir=self.cache_dir)
            if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
                return datasets.load_from_disk(str(path))  # a save_to_disk folder
            if path.is_dir():
                return datasets.load_dataset(str(path), data_files=self.data_files, cache_dir=self.cache_dir)
            return datasets.load_dataset(name, self.config, data_files=self.data_files, cache_dir=self.cache_dir)
        except DataError:
            raise
        except Exception as err:
            if path.exists():  # there, but unreadable: say why, not "no such file"
                raise DataError(f"cannot read the local {'file' if path.is_file() else 'folder'} {name!r}: {_unreadable(err)}") from None
            looks_local = name.startswith((".", "/", "~")) or path.suffix.lower() in _BUILDERS
            if self.data_files is not None:
                raise DataError(f"cannot load dataset {name!r} from data_files {self.data_files!r}: {_short(err)}") from None
            if looks_local:
                raise DataError(f"cannot load dataset {name!r}: no such local file or folder ({_short(err)})") from None
            raise DataError(
                f"cannot load dataset {name!r}" + (f" (config {self.config!r})" if self.config else "")
                + f": {_network_hint()}; pass a local path (--data.dataset=/path/to/file.jsonl or folder) "
                f"or a builder with files (--data.dataset=text --data.data_files=corpus.txt) ({_short(err)})"
            ) from None

    @property
    def raw(self) -> dict[str, Any]:
        """{"train", "validation"} datasets of documents (the validation split carved from train if absent)."""
        if self._raw is None:
            import datasets

            loaded = self._load()
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({self.train_split: loaded})
            if self.train_split not in loaded:
                raise DataError(f"dataset {self.dataset_name!r} has no split {self.train_split!r}; splits: {', '.join(loaded)}")
            train = loaded[self.train_split]
            if self.text_column not in train.column_names:
                raise DataError(f"dataset {self.dataset_name!r} has no column {self.text_column!r}; columns: {', '.join(train.column_names)}")
            val_name = next((s for s in (self.validation_split, "validation", "test") if s and s in loaded and s != self.train_split), None)
            if self.max_documents is not None:
                train = train.select(range(min(len(train), self.max_documents)))
            if len(train) == 0:
                raise DataError(f"dataset {self.dataset_name!r}: the {self.train_split} split has no documents")
            if val_name is not None:
                val = loaded[val_name]
                if self.max_documents is not None:
                    val = val.select(range(min(len(val), max(1, int(self.max_documents * self.val_fraction)))))
            else:
                if len(train) < 2:
                    raise DataError(f"dataset {self.dataset_name!r} has a single document and no validation split; the corpus is too short to split")
                parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
                train, val = parts["train"], parts["test"]
            self._raw = {"train": train, "validation": val}
        return self._raw

    # --- the contract -------------------------------------------------------------
    def build_splits(self):
        out = {}
        for split, docs in self.raw.items():
            packed = docs.map(
                pack_documents,
                batched=True,
                batch_size=self.map_batch_size,
                remove_columns=docs.column_names,
                num_proc=self.num_proc,
                fn_kwargs={"tokenizer": self.tokenizer, "text_column": self.text_column, "seq_len": self.seq_len, "separator": self.separator},
                desc=f"packing {split} into blocks of {self.seq_len}",
            )
            if len(packed) == 0:
                raise DataError(
                    f"dataset {self.dataset_name!r}: the {split} split is too short for seq_len={self.seq_len} "
                    f"({len(docs)} documents give no full block); use more text or a smaller seq_len"
                )
            out[split] = packed
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Text of each row; documents (split at the separator) one per line."""
        sep, tok = self.separator, self.tokenizer
        texts = []
        for row in tokens.tolist():
            pieces, current = [], []
            for i in row:
                if sep is not None and i == sep:
                    pieces.append(current)
                    current = []
                else:
                    current.append(i)
            pieces.append(current)
            texts.append("\n".join(tok.decode(p, skip_special_tokens=True) for p in pieces))
        return texts

    def decode_raw(self, tokens: torch.Tensor) -> list[str]:
        """Every id of each row, special tokens as their strings and no line breaks added: the transformers
        tokenizer's ``batch_decode`` with its defaults, as MDLM / Duo hand their samples to the judge."""
        return self.tokenizer.batch_decode(torch.as_tensor(tokens).tolist())

    @property
    def vocabulary(self) -> frozenset[str]:
        """Words of (up to 20,000) training documents: the reference for word validity."""
        if self._vocabulary is None:
            docs = self.raw["train"]
            docs = docs.select(range(min(len(docs), 20_000)))
            self._vocabulary = frozenset(w for text in docs[self.text_column] if text for w in words(text))
        return self._vocabulary

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float]:
        """``word_validity``: share of whole generated words found in the training documents; ``unique_words``."""
        return word_metrics(self.decode(tokens), self.vocabulary, drop_edges=True)

    def __repr__(self) -> str:
        return f"HubTextData({self.dataset_name!r}, tokenizer={self.tokenizer_name!r}, seq_len={self.seq_len})"
