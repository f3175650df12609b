"""Callbacks the run-lifecycle tests pass to ``flowzoo fit`` by class path (tests/ is on sys.path; subprocesses get
it through PYTHONPATH): record per-step losses, weights and data shares, and interrupt a run at a given step."""

from __future__ import annotations

import json
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class RecordSteps(Callback):
    """Appends one JSON line per optimizer step to ``<path>.rank<R>``: step, loss, a checksum of the weights and
    the batch's rows; at the start of training, this rank's sampler indices of the current epoch."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, trainer, record: dict) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        self._write(trainer, {"sampler": type(sampler).__name__, "rank": getattr(sampler, "rank", 0),
                              "replicas": getattr(sampler, "num_replicas", 1), "indices": [int(i) for i in iter(sampler)]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            checksum = float(sum(p.double().sum() for p in pl_module.parameters()))
        teacher = getattr(pl_module.objective, "_teacher", None)
        self._write(trainer, {"step": trainer.global_step, "loss": float(outputs["loss"]), "weights": checksum,
                              "rows": batch.tolist(), "teacher": None if teacher is None else id(teacher)})


class InterruptAt(Callback):
    """Sends this process ``signal_name`` (SIGINT, SIGTERM, SIGKILL) after optimizer step ``step``."""

    def __init__(self, step: int, signal_name: str = "SIGINT") -> None:
        self.step, self.signal_name = step, signal_name
        self._sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self._sent:
            self._sent = True
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def read_steps(path) -> dict[int, dict]:
    """{step: record} of rank 0's step records (the last record of a step wins)."""
    out = {}
    for line in open(f"{path}.rank0"):
        record = json.loads(line)
        if "step" in record:
            out[record["step"]] = record
    return out
