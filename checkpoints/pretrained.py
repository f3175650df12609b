"""save_pretrained / from_pretrained: ``config.json`` + ``model.safetensors`` in a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import flowzoo
from flowzoo.errors import CheckpointError, FlowzooError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise CheckpointError(f"unreadable flowzoo_version {version!r} in the checkpoint config") from None


def check_version(config: dict[str, Any]) -> None:
    """Refuse a config written by a newer flowzoo (another major, or a later minor, version)."""
    written = config.get("flowzoo_version")
    if written is None:
        raise CheckpointError("the checkpoint config has no flowzoo_version: it was not written by flowzoo")
    if _major_minor(written) > _major_minor(flowzoo.__version__) or _major_minor(written)[0] != _major_minor(flowzoo.__version__)[0]:
        raise CheckpointError(
            f"the checkpoint was written by flowzoo {written}, which this flowzoo {flowzoo.__version__} cannot read; upgrade flowzoo"
        )


def build_model(config: dict[str, Any]):
    """Rebuild a FlowLM from its config; unknown components and bad arguments become CheckpointError."""
    from flowzoo.module import FlowLM

    check_version(config)
    try:
        return FlowLM.from_config(config)
    except (FlowzooError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot rebuild the model from its config: {err}") from None


def load_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights only if every name and shape matches: a mismatched checkpoint is refused whole."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            x for x in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {wrong[:3]}" if wrong else "",
            ) if x
        )
        raise CheckpointError(f"weights in {source} do not match the config: {detail}")
    model.load_state_dict(state, strict=True)


def save_pretrained(model, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` (component names and arguments, flowzoo version) and ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "flowzoo_version": flowzoo.__version__})
    (directory / CONFIG_NAME).write_text(json.dumps(model.config(), indent=2, sort_keys=True))
    return directory


def from_pretrained(directory: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild a model from a directory written by :func:`save_pretrained` (safetensors only, never pickle)."""
    directory = Path(directory)
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: not a flowzoo model directory")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    model = build_model(config)
    try:
        state = load_file(weights_file, device=map_location)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{weights_file} is corrupt or truncated: {err}") from None
    load_state(model, state, str(weights_file))
    return model.eval()


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """A model from a Lightning ``.ckpt`` (written by ``flowzoo fit``) or a save_pretrained directory."""
    path = Path(path)
    if path.is_dir():
        return from_pretrained(path, map_location)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle refused, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if "flowzoo" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a flowzoo Lightning checkpoint (no 'flowzoo' config)")
    model = build_model(ckpt["flowzoo"])
    load_state(model, ckpt["state_dict"], str(path))
    return model.eval()
