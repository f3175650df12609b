"""Lightning callbacks of ``flowzoo fit``: an EMA of the weights with warm-up, the end-of-run save, exact resume.

``flowzoo fit`` adds :class:`EndOfRun` and :class:`ResumeState` to every run (flowzoo.cli); :class:`EMA` is named in
the configs (``trainer.callbacks: [{class_path: flowzoo.callbacks.EMA, init_args: {decay: 0.999}}]``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer, WeightAveraging


# --- EMA ---------------------------------------------------------------------------------------------------------
def ema_decay(n: int, beta: float, warmup: bool = True) -> float:
    """Decay of the n-th update (n = 1, 2, ... averages so far): min(beta, (1 + n) / (10 + n)) with warm-up, else beta.

    With warm-up the average follows the live weights closely at first (decay 0.18 at n = 1, 0.5 at n = 8, 0.9 at
    n = 80) and reaches beta after (10 beta - 1) / (1 - beta) updates (8,991 for beta = 0.999), so a short run's
    average is not dominated by the weights of its first steps.
    """
    return min(beta, (1 + n) / (10 + n)) if warmup else beta


def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor, beta: float,
               warmup: bool = True) -> None:
    """In place: theta_avg <- d theta_avg + (1 - d) theta, d = ema_decay(num_averaged) (AveragedModel's multi_avg_fn).

    A module-level function (bound with functools.partial) so that the callback pickles for ``ddp_spawn``."""
    d = ema_decay(int(num_averaged), beta, warmup)
    if averaged and (averaged[0].is_floating_point() or averaged[0].is_complex()):
        torch._foreach_lerp_(averaged, current, 1.0 - d)
    else:  # integer or boolean buffers (flags, counters): the live value
        for a, c in zip(averaged, current):
            a.copy_(c)


class EMA(WeightAveraging):
    """Exponential moving average of the weights with warm-up: ``decay`` is the final decay beta, the n-th update
    uses min(beta, (1 + n) / (10 + n)) (``warmup: false``: beta from the start, Lightning's EMAWeightAveraging).

    Validation, the saved checkpoint's ``state_dict`` and the model after ``fit`` hold the average; the checkpoint
    also keeps the live weights (``current_model_state``), from which a resumed run continues. Before the first
    update (a run shorter than ``update_starting_at_step``) there is no average yet: checkpoints and the final model
    are the live weights, never the initialisation.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every_n_steps: int = 1,
                 update_starting_at_step: int = 0, device: str | None = None, use_buffers: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if update_every_n_steps < 1 or update_starting_at_step < 0:
            raise ValueError(f"EMA needs update_every_n_steps >= 1 and update_starting_at_step >= 0, got "
                             f"{update_every_n_steps} and {update_starting_at_step}")
        super().__init__(device=device, use_buffers=use_buffers,
                         multi_avg_fn=functools.partial(ema_update, beta=decay, warmup=warmup))
        self.decay, self.warmup = decay, warmup
        self.update_every_n_steps, self.update_starting_at_step = update_every_n_steps, update_starting_at_step
        self._swapped = False

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        start = self.update_starting_at_step
        return step_idx >= start and (step_idx - start) % self.update_every_n_steps == 0

    @property
    def num_updates(self) -> int:
        """How many times the average has been updated (0: there is no average yet)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self.num_updates > 0
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self.num_updates > 0:
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.num_updates > 0:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
        # else: no average yet, the checkpoint holds the live weights (and resumes from them)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None and "averaging_state" not in checkpoint:
            return  # saved before the first update: the live weights are loaded, the average starts at the next update
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


# --- the end of a run --------------------------------------------------------------------------------------------
class ProcessTimer(Timer):
    """Lightning's ``max_time`` Timer, counting this process's training time only: a run resumed from a checkpoint
    gets the whole ``max_time`` again (Lightning's Timer restores the time already spent, so a resume with the same
    config would stop after a few steps)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class EndOfRun(Callback):
    """The end of training always saves, wherever it comes from (``max_steps``, ``max_time``, ``max_epochs``, Ctrl-C):

    - at the final step, every ModelCheckpoint that has not saved this step writes its checkpoint and ``last.ckpt``
      (before: ``last.ckpt`` stayed at the last multiple of ``every_n_train_steps``);
    - the first Ctrl-C (SIGINT) finishes the current step, saves as above and stops; a second one aborts;
    - SIGTERM (a scheduler's or a shell's stop; Lightning catches it and leaves at the end of the step) saves the
      step it stops at as above, then the process exits with 143 (128 + SIGTERM; ``flowzoo.cli.main``), where
      before the run ended silently, exit 0, with nothing saved since the last periodic checkpoint;
    - after ``fit``, the model (EMA weights where an EMA runs) goes to ``<run>/pretrained`` with ``save_pretrained``.
    """

    SIGTERM_STOP = "terminated by SIGTERM"  # the stop reason printed, and the one on_exception reports

    def __init__(self, pretrained: bool = True) -> None:
        self.pretrained = pretrained
        self._interrupted = False
        self._previous_handler: Any = None
        self._stop_reason: str | None = None

    # Ctrl-C: finish the step, then stop and save
    def _on_sigint(self, signum, frame) -> None:
        self._interrupted = True
        signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)  # a second Ctrl-C aborts
        print("\nflowzoo: interrupted; finishing this step and saving last.ckpt (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        from flowzoo.runs import forget_fresh_run

        forget_fresh_run()  # training starts: the run folder stays whatever happens next (flowzoo.runs)
        self._interrupted, self._stop_reason = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handler()
        if self._stop_reason == self.SIGTERM_STOP:
            self._report_stop(trainer)

    def _is_final_step(self, trainer) -> bool:
        if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
            return True
        if trainer.should_stop:
            return True
        max_epochs = trainer.max_epochs
        loop = trainer.fit_loop.epoch_loop
        return bool(max_epochs and max_epochs > 0 and loop.batch_progress.is_last_batch and trainer.current_epoch + 1 >= max_epochs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        interrupted = self._interrupted
        if trainer.world_size > 1:
            interrupted = trainer.strategy.reduce_boolean_decision(interrupted, all=False)
        if interrupted and not trainer.should_stop:
            trainer.should_stop = True
            self._stop_reason = "interrupted"
        if getattr(trainer, "received_sigterm", False) and self._stop_reason is None:
            trainer.should_stop = True  # Lightning raises SIGTERMException after this step's callbacks: save first
            self._stop_reason = self.SIGTERM_STOP
        if self._is_final_step(trainer):
            if trainer.should_stop and self._stop_reason is None and not (0 <= trainer.max_steps <= trainer.global_step):
                self._stop_reason = "max_time" if any(isinstance(cb, Timer) and cb.time_remaining() is not None and cb.time_remaining() <= 0 for cb in trainer.callbacks) else "stopped"
            save_final(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.should_stop and not trainer.sanity_checking and trainer.state.fn == "fit":  # e.g. EarlyStopping
            self._stop_reason = self._stop_reason or "stopped"
            save_final(trainer)  # before on_train_end, where an EMA puts its average into the live weights

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handler()
        save_final(trainer)  # a no-op when the final step is saved already
        if self._stop_reason:
            self._report_stop(trainer)

    def _report_stop(self, trainer) -> None:
        if trainer.is_global_zero:
            print(f"flowzoo: training stopped ({self._stop_reason}) at step {trainer.global_step}"
                  f"{f' of {trainer.max_steps}' if trainer.max_steps and trainer.max_steps > 0 else ''}; last.ckpt holds that "
                  "step; continue with --ckpt_path last", file=sys.stderr)

    def on_fit_end(self, trainer, pl_module) -> None:
        from flowzoo.checkpoints.callback import SavePretrained

        if not self.pretrained or any(isinstance(cb, SavePretrained) for cb in trainer.callbacks):
            return
        if trainer.is_global_zero:
            from flowzoo.checkpoints.pretrained import save_pretrained

            directory = os.path.join(trainer.default_root_dir, "pretrained")
            save_pretrained(pl_module, directory)
            print(f"flowzoo: save_pretrained wrote {directory}", file=sys.stderr)


def save_final(trainer) -> None:
    """Every ModelCheckpoint that has not saved at this step writes its checkpoint and ``last.ckpt`` now."""
    if trainer.global_step == 0 or trainer.sanity_checking:
        return
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb._last_global_step_saved == trainer.global_step:
            continue
        candidates = cb._monitor_candidates(trainer)
        if cb.monitor is None or cb.monitor in candidates:
            cb._save_topk_checkpoint(trainer, candidates)
        cb._save_last_checkpoint(trainer, candidates)
        if cb._last_global_step_saved != trainer.global_step:  # save_top_k 0 and save_last off: still a final file
            cb._save_checkpoint(trainer, os.path.join(cb.dirpath, f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"))


# --- exact resume ------------------------------------------------------------------------------------------------
class ResumeState(Callback):
    """Saves the random number generators' states (torch, CUDA, numpy, python) in every checkpoint and restores
    them when a run resumes, at the start of training, so the resumed run draws the same noise and times as the
    uninterrupted one. (The data position is the sampler's: flowzoo.data.sampler.ResumableSampler.)"""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None


def rng_states() -> dict[str, Any]:
    """The states of torch's, CUDA's, numpy's and python's generators, as tensors and plain values only (so that
    the checkpoint still loads with ``torch.load(weights_only=True)``)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def replace_timer(trainer) -> None:
    """Swap Lightning's max_time Timer for a :class:`ProcessTimer` (same duration, place and interval)."""
    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is Timer and cb._duration is not None:
            trainer.callbacks[i] = ProcessTimer(duration=timedelta(seconds=cb._duration), interval=cb._interval, verbose=cb._verbose)


def add_run_callbacks(trainer) -> None:
    """EndOfRun and ResumeState, after the other callbacks and before the checkpoint callbacks (so they see the
    EMA's update and the Timer's stop of this step before saving); the max_time Timer per process."""
    replace_timer(trainer)
    callbacks = trainer.callbacks
    at = next((i for i, cb in enumerate(callbacks) if isinstance(cb, ModelCheckpoint)), len(callbacks))
    for cb in (ResumeState(), EndOfRun()):
        if not any(type(c) is type(cb) for c in callbacks):
            callbacks.insert(at, cb)
            at += 1
