"""A Lightning callback that writes the trained model with ``save_pretrained`` at the end of ``fit``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback


class SavePretrained(Callback):
    """At the end of ``fit``, write the model with ``save_pretrained`` (config.json + model.safetensors) to
    ``directory`` (default: ``<trainer.default_root_dir>/pretrained``)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        from flowzoo.checkpoints.pretrained import save_pretrained

        if trainer.is_global_zero:
            directory = self.directory or os.path.join(trainer.default_root_dir, "pretrained")
            save_pretrained(pl_module, directory)
            print(f"flowzoo: save_pretrained wrote {directory}")
