"""Progress bars for long loops: shown on a terminal, silent in logs and tests."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, min_total: int = 32) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar when there are at least ``min_total`` of them and stderr is a TTY."""
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if n is not None and n < min_total:
        return items
    return tqdm(items, desc=desc, total=n, disable=None, leave=False, dynamic_ncols=True)


try:
    from lightning.pytorch.callbacks import RichProgressBar
except ImportError:  # pragma: no cover
    RichProgressBar = None  # type: ignore[assignment,misc]

if RichProgressBar is not None:

    class StepProgressBar(RichProgressBar):
        """Lightning's rich bar, counting optimizer steps of ``max_steps`` ("Step 1200/3000") on step-based runs,
        where the stock bar reads "Epoch 0/-2" (max_epochs is -1 there)."""

        def _steps(self) -> int:
            trainer = self.trainer
            return trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else 0

        @property
        def total_train_batches(self):
            return self._steps() or super().total_train_batches

        def _get_train_description(self, current_epoch: int) -> str:
            if self._steps():
                return f"{'Step':{len(self.validation_description)}}"
            max_epochs = self.trainer.max_epochs
            return f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self._steps() and self.train_progress_bar_id is not None:
                return  # one bar for the whole run, not one per epoch
            super().on_train_epoch_start(trainer, pl_module)
            if self._steps() and self.progress is not None and self.train_progress_bar_id is not None:
                self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if not self._steps():
                return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if not self.is_disabled and self.train_progress_bar_id is None:
                self._initialize_train_progress_bar_id()
            self._update(self.train_progress_bar_id, trainer.global_step)
            self._update_metrics(trainer, pl_module)
