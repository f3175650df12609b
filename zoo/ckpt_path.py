"""``--ckpt_path`` of ``flowzoo fit|validate|test|predict``: the checkpoint is read and checked before Lightning
touches it, so a bad file is one line (as ``flowzoo sample`` gives), never a traceback from inside Lightning.

- :func:`read` refuses what ``load_checkpoint`` refuses (not a torch file, truncated, a pickle of objects, not a
  flowzoo checkpoint, config and weights that disagree, non-finite weights) and non-finite optimizer or EMA state;
- :func:`check_resumable`: ``fit`` resumes into the model the command line built, so its architecture must match;
- :func:`evaluation_model`: ``validate``/``test``/``predict`` use the checkpoint's own model (its config), so no
  architecture flags are needed.
"""

from __future__ import annotations

from pathlib import Path

from flowzoo.errors import CheckpointError

LIGHTNING_CHOICES = ("best", "last", "hpc", "registry")  # resolved by Lightning itself, not a file


def local_file(ckpt_path) -> Path | None:
    """The local file ``--ckpt_path`` names, or None for Lightning's own choices and remote paths."""
    if ckpt_path in (None, "", "null", "None") or str(ckpt_path) in LIGHTNING_CHOICES or "://" in str(ckpt_path):
        return None
    return Path(str(ckpt_path)).expanduser()


def read(path: Path):
    """The model a ``--ckpt_path`` file holds (weights loaded), refused in one line if unusable."""
    from flowzoo.checkpoints.pretrained import build_model, check_finite, load_state, read_checkpoint, training_tensors
    from flowzoo.module import FlowLM

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (--ckpt_path)")
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["flowzoo"], FlowLM)
    load_state(model, ckpt["state_dict"], str(path))
    check_finite(training_tensors(ckpt), str(path))
    return model


def check_resumable(model, saved, path: Path) -> None:
    """Refuse resuming ``model`` (built from the command line) from a checkpoint of another architecture."""
    from flowzoo.checkpoints.pretrained import state_mismatch

    detail = state_mismatch(model.state_dict(), saved.state_dict(), against="command line")
    if detail:
        raise CheckpointError(
            f"checkpoint {path} (--ckpt_path) does not match the model the command line builds: {detail}; "
            "pass the architecture it was trained with (or the same --config)"
        )


def evaluation_model(model, saved, datamodule, path: Path):
    """The checkpoint's model for validate/test/predict, keeping the command line's ``num_val_samples``."""
    vocab = getattr(datamodule, "vocab_size", None)
    if vocab is not None and vocab != saved.vocab_size:
        raise CheckpointError(
            f"checkpoint {path} (--ckpt_path) has a vocabulary of {saved.vocab_size} tokens but the data module has {vocab}: "
            "pass the data it was trained on"
        )
    saved.num_val_samples = model.num_val_samples
    return saved.train()
