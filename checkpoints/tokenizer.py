"""Tokenizer files beside the weights, so a published model decodes its ids without its corpus.

The hook a data module may define is ``save_tokenizer(directory) -> list[str]`` (the file names it
wrote). Without it, a ``tokenizer`` attribute is saved (a ``transformers`` tokenizer with
``save_pretrained`` or a ``tokenizers.Tokenizer`` with ``save``); failing that, a word-level
``tokenizer.json`` is built from decoding each id alone (the Markov language's word list).
:func:`load_tokenizer` reads ``tokenizer.json`` back as a ``tokenizers.Tokenizer`` (JSON, never pickle).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from flowzoo.errors import CheckpointError

TOKENIZER_NAME = "tokenizer.json"
CHECKPOINT_KEY = "flowzoo_tokenizer"  # a Lightning checkpoint's copy of tokenizer.json (its text)


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


def tokenizer_json(datamodule) -> str | None:
    """``datamodule``'s tokenizer as the text of a ``tokenizer.json``, or None if it writes none."""
    with tempfile.TemporaryDirectory() as tmp:
        files = save_tokenizer(datamodule, tmp)
        path = Path(tmp) / TOKENIZER_NAME
        return path.read_text(encoding="utf-8") if TOKENIZER_NAME in files and path.is_file() else None


def model_tokenizer_json(model) -> str | None:
    """What a Lightning checkpoint of ``model`` carries under :data:`CHECKPOINT_KEY`: the tokenizer of the trainer's
    data module (computed once per data module), else the model's own ``tokenizer``, else None."""
    from flowzoo.errors import FlowzooError

    trainer = getattr(model, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    cached = model.__dict__.get("_flowzoo_tokenizer_json")  # (id of the data module, text): no reference kept
    if cached is not None and cached[0] == id(datamodule):
        return cached[1]
    text = None
    if datamodule is not None:
        try:
            text = tokenizer_json(datamodule)
        except (FlowzooError, OSError) as err:
            warnings.warn(f"the checkpoint will not carry the tokenizer: {err}", stacklevel=2)
    own = getattr(model, "tokenizer", None)
    if text is None and own is not None and hasattr(own, "to_str"):
        text = own.to_str()
    if text is not None and getattr(model, "tokenizer", None) is None:
        model.tokenizer = tokenizer_from_json(text, "the data module")
    model.__dict__["_flowzoo_tokenizer_json"] = (id(datamodule), text)
    return text


def tokenizer_from_json(text: str, source: str):
    """A ``tokenizers.Tokenizer`` from the text of a ``tokenizer.json`` (a Lightning checkpoint's copy)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"the tokenizer stored in {source} is not valid: {err}") from None


def checkpoint_tokenizer(ckpt: dict, path):
    """The tokenizer a Lightning checkpoint carries, or None (checkpoints written before flowzoo stored it)."""
    text = ckpt.get(CHECKPOINT_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: its {CHECKPOINT_KEY!r} entry is a {type(text).__name__}, not tokenizer.json text")
    return tokenizer_from_json(text, str(path))
