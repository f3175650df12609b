"""Corpora that do not fit on disk (OpenWebText, LM1B at scale), read with ``datasets`` streaming.

Documents are tokenized and packed on the fly, exactly as :class:`flowzoo.data.hub_text.HubTextData` packs them
(``d_1 <sep> d_2 <sep> ...`` cut into rows of ``seq_len`` ids), and nothing but the tokenizer is cached.
Without a validation split, the first ``val_documents`` documents are held out and training reads the rest
(disjoint). The training stream is shuffled through a buffer of ``shuffle_buffer`` documents, reshuffled each epoch
(seed + epoch; the recipes set ``reload_dataloaders_every_n_epochs: 1`` so Lightning asks again) and, under
DDP, split between ranks with ``datasets.distributed.split_dataset_by_node`` (each rank reads its own shard
or every world_size-th document).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from flowzoo.data.base import _collate
from flowzoo.data.hub_text import _BUILDERS, HubTextData, _network_hint, _short, pack_documents
from flowzoo.data.text import word_metrics, words
from flowzoo.errors import DataError
from flowzoo.registry import register


@register("data", "stream")
class StreamingTextData(HubTextData):
    """Hub or local text read with ``datasets`` streaming, tokenized and packed on the fly (OpenWebText, LM1B)."""

    def __init__(
        self,
        dataset: str = "Skylion007/openwebtext",
        config: str | None = None,
        tokenizer: str = "gpt2",
        text_column: str = "text",
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        train_split: str = "train",
        validation_split: str | None = None,
        val_documents: int = 100_000,
        shuffle_buffer: int = 10_000,
        seq_len: int = 1024,
        batch_size: int = 32,
        map_batch_size: int = 1000,
        cache_dir: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        metric: str | None = None,
    ) -> None:
        super().__init__(dataset=dataset, config=config, tokenizer=tokenizer, text_column=text_column, data_files=data_files,
                         train_split=train_split, validation_split=validation_split, seq_len=seq_len, batch_size=batch_size,
                         map_batch_size=map_batch_size, cache_dir=cache_dir, seed=seed, num_workers=num_workers, metric=metric)
        if val_documents < 1:
            raise DataError(f"val_documents must be positive, got {val_documents}")
        if shuffle_buffer < 0:
            raise DataError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.val_documents, self.shuffle_buffer = val_documents, shuffle_buffer
        self._streams: dict[str, Any] | None = None

    # --- documents ------------------------------------------------------------------
    def _open(self, split: str):
        import datasets

        name = self.dataset_name
        path = Path(name).expanduser()
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"cannot tell the format of {name!r}; use one of {', '.join(sorted(_BUILDERS))}")
            return datasets.load_dataset(builder, data_files=str(path), split=split, streaming=True)
        if path.is_dir():
            return datasets.load_dataset(str(path), data_files=self.data_files, split=split, streaming=True)
        return datasets.load_dataset(name, self.config, data_files=self.data_files, split=split, streaming=True, cache_dir=self.cache_dir)

    def _stream(self, split: str):
        try:
            return self._open(split)
        except DataError:
            raise
        except ValueError as err:
            if "split" in str(err).lower() or "Unknown split" in str(err):
                return None
            raise DataError(f"cannot stream dataset {self.dataset_name!r}: {_short(err)}") from None
        except Exception as err:
            raise DataError(f"cannot stream dataset {self.dataset_name!r}: {_network_hint()} ({_short(err)})") from None

    @property
    def streams(self) -> dict[str, Any]:
        """{"train", "validation"}: ``IterableDataset`` streams of documents (the text column only)."""
        if self._streams is None:
            train = self._stream(self.train_split)
            if train is None:
                raise DataError(f"dataset {self.dataset_name!r} has no split {self.train_split!r}")
            val = self._stream(self.validation_split) if self.validation_split else None
            if val is None:  # held out from the head of the training stream
                val, train = train.take(self.val_documents), train.skip(self.val_documents)
            self._streams = {"train": train.select_columns([self.text_column]), "validation": val.select_columns([self.text_column])}
        return self._streams

    def packed(self, split: str, rank: int = 0, world_size: int = 1, epoch: int = 0):
        """The split as rows {"input_ids": (seq_len,)}: shuffled (train, per epoch), sharded by rank, tokenized and packed."""
        from datasets.distributed import split_dataset_by_node

        docs = self.streams[split]
        if split == "train" and self.shuffle_buffer > 1:
            docs = docs.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        if world_size > 1:
            docs = split_dataset_by_node(docs, rank=rank, world_size=world_size)
        rows = docs.map(
            pack_documents,
            batched=True,
            batch_size=self.map_batch_size,
            remove_columns=[self.text_column],
            fn_kwargs={"tokenizer": self.tokenizer, "text_column": self.text_column, "seq_len": self.seq_len, "separator": self.separator},
        )
        rows = rows.with_format("torch")
        rows.set_epoch(epoch)  # the shuffle's seed is seed + epoch
        return rows

    # --- the contract -------------------------------------------------------------------
    def _ranks(self) -> tuple[int, int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1, 0
        return int(trainer.global_rank), int(trainer.world_size), int(trainer.current_epoch)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        rank, world, epoch = self._ranks()
        return DataLoader(self.packed(split, rank, world, epoch), batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=_collate, drop_last=split == "train")

    def train_dataloader(self) -> DataLoader:
        """The stream, shuffled by its own buffer and split by rank (no map-style sampler: the corpus is not materialised;
        a resumed run restarts the stream's epoch rather than continuing at its batch)."""
        return self._loader("train", shuffle=True)

    def build_splits(self):
        raise DataError("a streamed corpus has no materialised splits; iterate train_dataloader() / val_dataloader()")

    @property
    def raw(self) -> dict[str, Any]:
        return self.streams

    @property
    def vocabulary(self) -> frozenset[str]:
        """Words of the first 20,000 training documents: the reference for word validity."""
        if self._vocabulary is None:
            docs = self.streams["train"].take(20_000)
            self._vocabulary = frozenset(w for row in docs if row[self.text_column] for w in words(row[self.text_column]))
        return self._vocabulary

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float]:
        return word_metrics(self.decode(tokens), self.vocabulary, drop_edges=True)

    def __repr__(self) -> str:
        return f"StreamingTextData({self.dataset_name!r}, tokenizer={self.tokenizer_name!r}, seq_len={self.seq_len})"
