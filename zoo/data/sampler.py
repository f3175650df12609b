"""The training order: a permutation per epoch seeded by (seed, epoch), this rank's share of it, resumable mid-epoch."""

from __future__ import annotations

import os
from typing import Iterator

import torch.distributed as dist
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """The rows of epoch e in the order of ``randperm(N, seed + e)``; with several processes (DDP) rank r takes rows
    r, r + W, r + 2W, ... of it (W processes), a disjoint share. ``resume_at(epoch, batches)`` makes the next pass
    start at that epoch, after the first ``batches * batch_size`` rows of this rank's share: where an interrupted run
    stopped, so a resumed run reads the same batches as the uninterrupted one.

    A DistributedSampler, so Lightning neither replaces it under DDP nor loses its ``set_epoch`` calls. ``seed``
    defaults to the run's ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int | None = None, drop_last_batch: bool = False) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size, self.drop_last_batch = batch_size, drop_last_batch
        self._skip: tuple[int, int] | None = None  # (epoch, rows of this rank's share to skip)

    def resume_at(self, epoch: int, batches: int, limit: int | float | None = None) -> None:
        """Start the next pass at ``epoch`` after ``batches`` batches (a whole epoch done: the next epoch's start);
        ``limit``: the trainer's ``limit_train_batches`` (batches, or a fraction of the epoch) where it ends epochs early."""
        per_epoch = self.num_samples // self.batch_size if self.drop_last_batch else -(-self.num_samples // self.batch_size)
        if isinstance(limit, int) and not isinstance(limit, bool):
            per_epoch = min(per_epoch, limit)
        elif isinstance(limit, float) and limit < 1.0:
            per_epoch = int(per_epoch * limit)
        if batches >= per_epoch:
            epoch, batches = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = (epoch, batches * self.batch_size) if batches else None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:  # every pass over the resumed epoch skips
            indices = indices[self._skip[1]:]
        return iter(indices)
