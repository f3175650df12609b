"""Tokenizer files beside the weights, so a published model decodes its ids without its corpus.

The hook a data module may define is ``save_tokenizer(directory) -> list[str]`` (the file names it
wrote). Without it, a ``tokenizer`` attribute is saved (a ``transformers`` tokenizer with
``save_pretrained`` or a ``tokenizers.Tokenizer`` with ``save``); failing that, a word-level
``tokenizer.json`` is built from decoding each id alone (the Markov language's word list).
:func:`load_tokenizer` reads ``tokenizer.json`` back as a ``tokenizers.Tokenizer`` (JSON, never pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowzoo.errors import CheckpointError

TOKENIZER_NAME = "tokenizer.json"


def word_list(datamodule) -> list[str] | None:
    """One string per id (id i -> decode([i])), if they form a whitespace-free, duplicate-free word list."""
    try:
        words = datamodule.decode(torch.arange(datamodule.vocab_size)[:, None])  # (V, 1) ids -> V strings
    except (NotImplementedError, AttributeError):
        return None
    ok = len(set(words)) == len(words) and all(w and len(w.split()) == 1 and w == w.strip() for w in words)
    return list(words) if ok else None


def word_level_tokenizer(words: list[str]):
    """A ``tokenizers`` word-level tokenizer: whitespace split, word i <-> id i, decode joins with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def save_tokenizer(datamodule, directory: str | os.PathLike) -> list[str]:
    """Write ``datamodule``'s tokenizer into ``directory``; return the names of the files written (maybe none)."""
    directory = Path(directory)
    hook = getattr(datamodule, "save_tokenizer", None)
    if callable(hook):
        return sorted(Path(f).name for f in (hook(directory) or []))
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):  # transformers tokenizer
        return sorted({Path(f).name for f in tokenizer.save_pretrained(str(directory))})
    if tokenizer is not None and hasattr(tokenizer, "to_str"):  # tokenizers.Tokenizer
        tokenizer.save(str(directory / TOKENIZER_NAME))
        return [TOKENIZER_NAME]
    words = word_list(datamodule)
    if words is None:
        return []
    word_level_tokenizer(words).save(str(directory / TOKENIZER_NAME))
    return [TOKENIZER_NAME]


def load_tokenizer(directory: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` in ``directory/tokenizer.json``, or None if the model has none."""
    path = Path(directory) / TOKENIZER_NAME
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{path} is not a valid tokenizer file: {err}") from None
