"""``flowzoo import``: published MDLM / Duo / FLM checkpoints (a Hub repo, a folder, a trusted ``.ckpt``) written as
flowzoo ``save_pretrained`` folders (safetensors). The format is :mod:`flowzoo.checkpoints.reference`."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from flowzoo.checkpoints.reference import (
    PICKLE_SUFFIXES,
    read_json,
    read_safetensors,
    flowzoo_weights,
    read_folder,
    read_pickle,
)
from flowzoo.errors import CheckpointError


def read_source(source: str | os.PathLike, *, trust_pickle: bool = False, use_ema: bool = True, revision: str | None = None):
    """(flowzoo config, DDiT state, provenance) from a folder, a ``.ckpt``/``.pt`` file, or a Hub repo id."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors":
            return read_folder(path.parent)
        return read_pickle(path, trust_pickle=trust_pickle, use_ema=use_ema)
    if not path.exists() and path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"checkpoint {path} does not exist")
    from flowzoo.checkpoints.pretrained import resolve

    return read_folder(resolve(str(source), revision=revision))  # a Hub repo id: config.json + model.safetensors only


# --- building and writing ------------------------------------------------------------------
def load_backbone(directory: str | os.PathLike):
    """The ``ddit`` backbone alone of an imported folder, weights loaded, eval mode (e.g. to call it with Duo's top-k bags)."""
    from flowzoo import registry
    from flowzoo.checkpoints.pretrained import check_version

    directory = Path(directory)
    config = read_json(directory / "config.json")
    check_version(config)
    backbone = registry.build("backbone", config["backbone"])
    extra = 1 if config.get("path", {}).get("name") == "masked" else 0
    backbone.bind(config["vocab_size"] + extra, config["vocab_size"])
    state = read_safetensors(directory / "model.safetensors")
    prefix = "backbone."
    own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    from flowzoo.checkpoints.pretrained import load_state

    load_state(backbone, own, str(directory / "model.safetensors"))
    return backbone.eval()


def build_imported(config: dict, state: dict[str, torch.Tensor], meta: dict):
    """A FlowLM with the imported weights (refused whole if any name or shape disagrees)."""
    from flowzoo.checkpoints.pretrained import build_model, load_state
    from flowzoo.module import FlowLM

    model = build_model(config, FlowLM)
    load_state(model, flowzoo_weights(config, state), meta.get("from", "the source"))
    model.hub_metadata["imported"] = meta
    return model.eval()


class _TokenizerHolder:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer


def load_hf_tokenizer(name: str | None, vocab_size: int):
    """A transformers tokenizer by local folder or (cached) Hub name, or None with a warning when it cannot be had."""
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        local = Path(name).expanduser()
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name)
    except Exception as err:  # offline and not cached, no such folder: the model is still written
        warnings.warn(f"importing without tokenizer files: cannot load tokenizer {name!r} ({type(err).__name__}); "
                      "pass --tokenizer with a local tokenizer folder", stacklevel=2)
        return None
    if len(tokenizer) != vocab_size:
        raise CheckpointError(f"tokenizer {name!r} has {len(tokenizer)} tokens but the model {vocab_size}: not the model's tokenizer")
    return tokenizer


def import_checkpoint(source: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False, use_ema: bool = True,
                      tokenizer: str | None = None, revision: str | None = None) -> Path:
    """Convert ``source`` into a flowzoo ``save_pretrained`` folder ``out`` (config.json, model.safetensors,
    tokenizer files where the tokenizer is known and available, README.md). Returns ``out``."""
    config, state, meta = read_source(source, trust_pickle=trust_pickle, use_ema=use_ema, revision=revision)
    tokenizer = load_hf_tokenizer(tokenizer or meta.get("tokenizer"), config["vocab_size"])
    out = Path(out)
    model = build_imported(config, state, meta)
    from flowzoo.checkpoints.pretrained import save_pretrained

    return save_pretrained(model, out, datamodule=_TokenizerHolder(tokenizer) if tokenizer is not None else None)
