"""The data-module contract: token ids of fixed length, a decoder to text, and sample metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from flowzoo.errors import DataError
from flowzoo.registry import Component


class TokenDataModule(Component, L.LightningDataModule):
    """Fixed-length sequences of token ids as a ``datasets.Dataset`` with an ``input_ids`` column.

    Subclasses implement :meth:`build_splits` (returning train and validation datasets),
    ``vocab_size``, :meth:`decode` and :meth:`evaluate_samples`.
    """

    def __init__(self, seq_len: int = 64, batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        if seq_len < 2:
            raise DataError(f"seq_len must be at least 2, got {seq_len}")
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
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

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float]:
        """Quality figures of generated ids (B, L), e.g. valid-transition rate or word validity."""
        return {}

    # --- shared -------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, Any]:
        if self._splits is None:
            splits = self.build_splits()
            for name in ("train", "validation"):
                if name not in splits or len(splits[name]) == 0:
                    raise DataError(f"{type(self).__name__}: the {name} split is empty; the corpus is too short for seq_len={self.seq_len}")
            self._splits = {k: v.with_format("torch", columns=["input_ids"]) for k, v in splits.items()}
        return self._splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle and len(self.splits[split]) >= self.batch_size,
            collate_fn=_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)


def _collate(rows: list[dict]) -> torch.Tensor:
    return torch.stack([r["input_ids"] for r in rows]).long()  # (B, L)
