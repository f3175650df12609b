"""The data-module contract: token ids of fixed length, a decoder to text, and sample metrics.

A data module may also take a metric by import path (``metric="package.module:function"``): a function
from the decoded samples (``list[str]``) to named figures (``dict[str, float | None]``, None meaning
"not applicable"), reported beside the module's own figures in validation, ``flowzoo sample`` and
``flowzoo benchmark`` (:meth:`TokenDataModule.sample_metrics`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from flowzoo.data.sampler import ResumableSampler
from flowzoo.errors import DataError
from flowzoo.registry import Component


class TokenDataModule(Component, L.LightningDataModule):
    """Fixed-length sequences of token ids as a ``datasets.Dataset`` with an ``input_ids`` column.

    Subclasses implement :meth:`build_splits` (returning train and validation datasets),
    ``vocab_size``, :meth:`decode` and :meth:`evaluate_samples`. A labelled data module (rows with a class) adds
    its ``label`` column to ``columns``; its batches are then dicts {"input_ids": (B, L), "labels": (B,)}, which
    only an objective that reads labels accepts (``classify``).
    """

    columns: tuple[str, ...] = ("input_ids",)  # the dataset columns a batch carries

    def __init__(self, seq_len: int = 64, batch_size: int = 32, num_workers: int = 0, metric: str | None = None) -> None:
        super().__init__()
        if seq_len < 2:
            raise DataError(f"seq_len must be at least 2, got {seq_len}")
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.metric = metric
        self._metric_fn = load_metric(metric) if metric else None  # fails here, before any training
        self._splits: dict[str, Any] | None = None

    # --- to implement -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def build_splits(self) -> dict[str, Any]:
        """{"train": Dataset, "validation": Dataset}, each with an ``input_ids`` column of length seq_len."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> list[str]:
        raise NotImplementedError

    def decode_raw(self, tokens: torch.Tensor) -> list[str]:
        """Text of each row (B, L) with every id written, special tokens as their strings (``[CLS]``, ``[SEP]``,
        ``<|endoftext|>``): MDLM / Duo's ``tokenizer.batch_decode(samples)``, the judge's text under
        ``judge_text: raw``. Data without special tokens (markov, shakespeare, mirror): :meth:`decode` itself."""
        return self.decode(tokens)

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float]:
        """Quality figures of generated ids (B, L), e.g. valid-transition rate or word validity."""
        return {}

    # --- shared -------------------------------------------------------------------
    def sample_metrics(self, tokens: torch.Tensor) -> dict[str, float | None]:
        """:meth:`evaluate_samples` and the ``metric`` function's figures on the decoded samples."""
        figures = dict(self.evaluate_samples(tokens))
        if self._metric_fn is not None:
            own = self.text_metrics(self.decode(tokens))
            clash = sorted(set(own) & set(figures))
            if clash:
                raise DataError(f"metric {self.metric}: its figures {', '.join(clash)} clash with the data module's own; rename them")
            figures.update(own)
        return figures

    def text_metrics(self, texts: list[str]) -> dict[str, float | None]:
        """The ``metric`` function's figures on decoded samples (none without a ``metric``)."""
        if self._metric_fn is None:
            return {}
        return call_metric(self._metric_fn, self.metric, list(texts))

    @property
    def splits(self) -> dict[str, Any]:
        if self._splits is None:
            splits = self.build_splits()
            for name in ("train", "validation"):
                if name not in splits or len(splits[name]) == 0:
                    raise DataError(f"{type(self).__name__}: the {name} split is empty; the corpus is too short for seq_len={self.seq_len}")
            self._splits = {k: v.with_format("torch", columns=list(self.columns)) for k, v in splits.items()}
        return self._splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle and len(self.splits[split]) >= self.batch_size,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a ResumableSampler: the order of epoch e is fixed by (seed, e), each DDP rank reads its own
        share, and a run resumed mid-epoch continues at the batch where the checkpoint was taken."""
        dataset = self.splits["train"]
        drop_last = len(dataset) >= self.batch_size
        sampler = ResumableSampler(dataset, self.batch_size, shuffle=True, drop_last_batch=drop_last)
        position = _fit_position(getattr(self, "trainer", None))
        if position is not None:
            sampler.resume_at(*position, limit=getattr(self.trainer, "limit_train_batches", None))
        # the loader's own generator: creating its iterator must not draw from the global RNG (the objectives' noise)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=drop_last, collate_fn=self.collate, generator=torch.Generator().manual_seed(sampler.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def collate(self, rows: list[dict]):
        """Token ids (B, L); with a ``label`` column, {"input_ids": (B, L), "labels": (B,)}."""
        if "label" in self.columns:
            return {"input_ids": _collate(rows), "labels": torch.stack([r["label"] for r in rows]).long()}
        return _collate(rows)

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)


def _fit_position(trainer) -> tuple[int, int] | None:
    """(epoch, batches of it done) of the fit loop, as restored from a checkpoint; None outside ``fit``."""
    if trainer is None:
        return None
    try:
        loop = trainer.fit_loop
        return loop.epoch_progress.current.completed, loop.epoch_loop.batch_progress.current.ready
    except AttributeError:
        return None


def _collate(rows: list[dict]) -> torch.Tensor:
    return torch.stack([r["input_ids"] for r in rows]).long()  # (B, L)


def load_metric(path: str) -> Callable[[list[str]], Mapping[str, Any]]:
    """The function named ``package.module:function`` (or ``package.module.function``), imported now."""
    module_name, sep, attr = str(path).partition(":")
    if not sep:
        module_name, _, attr = str(path).rpartition(".")
    if not module_name or not attr:
        raise DataError(f"metric {path!r}: give an import path, package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DataError(f"metric {path!r}: cannot import {module_name!r} ({err}); is it installed or on PYTHONPATH?") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise DataError(f"metric {path!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise DataError(f"metric {path!r} is a {type(fn).__name__}, not a function")
    return fn


def call_metric(fn: Callable, name: str | None, texts: list[str]) -> dict[str, float | None]:
    """``fn(texts)`` checked: a mapping from names to numbers (None: not applicable)."""
    result = fn(texts)
    if not isinstance(result, Mapping):
        raise DataError(f"metric {name}: must return a dict of named figures, got {type(result).__name__}")
    out: dict[str, float | None] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            raise DataError(f"metric {name}: figure names must be non-empty strings, got {key!r}")
        if value is None:
            out[key] = None
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"metric {name}: figure {key!r} is {value!r}, not a number (or None for not applicable)") from None
    return out
