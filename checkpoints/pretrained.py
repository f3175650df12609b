"""save_pretrained / from_pretrained: ``config.json`` + ``model.safetensors`` (+ tokenizer, model card).

``from_pretrained`` takes a local directory or a Hugging Face Hub repo id (``org/name``, optional
``revision``); repo ids go through ``huggingface_hub.snapshot_download``, so the standard cache
(``HF_HOME``/``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE`` apply. Only safetensors are ever read.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import flowzoo
from flowzoo.devices import resolve_device
from flowzoo.errors import CheckpointError, FlowzooError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# what a Hub download fetches: never pickles (*.bin, *.pt, *.ckpt), whatever the repo also holds
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt"]
# config keys that describe the model's history, not its construction (kept in hub_metadata)
METADATA_KEYS = ("training", "metrics", "imported")


def _major_minor(version: str) -> tuple[int, int]:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise CheckpointError(f"unreadable flowzoo_version {version!r} in the checkpoint config") from None


def check_version(config: dict[str, Any]) -> None:
    """Refuse a config written by a newer flowzoo (another major, or a later minor, version)."""
    written = config.get("flowzoo_version")
    if written is None:
        raise CheckpointError("the checkpoint config has no flowzoo_version: it was not written by flowzoo")
    ours = _major_minor(flowzoo.__version__)
    if _major_minor(written)[0] < ours[0]:
        raise CheckpointError(
            f"the checkpoint was written by flowzoo {written}, an older major version that this flowzoo {flowzoo.__version__} "
            f"cannot read; load it with flowzoo {_major_minor(written)[0]}.x"
        )
    if _major_minor(written) > ours:
        raise CheckpointError(
            f"the checkpoint was written by flowzoo {written}, which this flowzoo {flowzoo.__version__} cannot read; upgrade flowzoo"
        )


def _check_numbers(args: Any, signature_of, where: str) -> None:
    """Each argument whose parameter defaults to a number must be a number ("48" is refused, not compared)."""
    from flowzoo import registry

    if not isinstance(args, dict):
        raise CheckpointError(f"the checkpoint config's {where} arguments must be a JSON object, got {args!r}")
    for key, value in registry.not_numbers(signature_of, args)[:1]:
        raise CheckpointError(f"the checkpoint config is invalid: {where}: {key} must be a number, got {value!r}")


def check_config_types(config: dict[str, Any], model_class) -> None:
    """Refuse values of the wrong JSON type in a model config (vocab_size, optim and component arguments) in one line,
    before they reach a constructor as a comparison or shape error."""
    from flowzoo import registry

    vocab = config["vocab_size"]
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        raise CheckpointError(f"the checkpoint config is invalid: vocab_size must be an integer, got {vocab!r}")
    _check_numbers(config.get("optim") or {}, model_class, "optim")
    for kind in ("backbone", "path", "head", "objective", "sampler"):
        spec = config[kind]
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            try:
                cls = registry.get(kind, spec["name"])
            except FlowzooError:
                continue  # refused by name when the model is built
            _check_numbers(spec.get("init_args") or {}, cls, f"{kind} {spec['name']!r}")


def build_model(config: dict[str, Any], model_class=None):
    """Rebuild a model of ``model_class`` (FlowLM or a subclass) from its config; unknown components and bad
    arguments become CheckpointError. This module is the format, below flowzoo.module (whose FlowLM inherits
    save_pretrained/from_pretrained from it): it never imports FlowLM; :mod:`flowzoo.checkpoints.load`'s
    loaders pass it."""
    if model_class is None:
        raise TypeError("build_model needs the model class: use flowzoo.checkpoints.load_checkpoint / from_pretrained (FlowLM)")
    if not isinstance(config, dict):
        raise CheckpointError(f"the checkpoint config must be a JSON object, got {type(config).__name__}")
    check_version(config)
    missing = [k for k in ("vocab_size", "backbone", "path", "head", "objective", "sampler") if k not in config]
    if missing:
        raise CheckpointError(f"the checkpoint config lacks {', '.join(repr(k) for k in missing)}: it is incomplete or not a flowzoo model config")
    check_config_types(config, model_class)
    try:
        model = model_class.from_config(config)
    except (FlowzooError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot rebuild the model from its config: {err}") from None
    model.hub_metadata = {k: config[k] for k in METADATA_KEYS if config.get(k)}
    return model


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], against: str = "config") -> str | None:
    """What differs between two state dicts' names and shapes (missing, unexpected, shape), or None."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs {against} {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or wrong):
        return None
    return "; ".join(
        x for x in (
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else "",
        ) if x
    )


def check_finite(tensors, source: str) -> None:
    """Refuse NaN or inf in any floating tensor of ``tensors`` ((name, tensor) pairs), naming the file and tensor."""
    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"refused {source}: tensor {name} holds {bad} non-finite value(s) (NaN or inf)")


def load_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights only if every name and shape matches and every value is finite: a bad checkpoint is refused whole."""
    detail = state_mismatch(model.state_dict(), state)
    if detail:
        raise CheckpointError(f"weights in {source} do not match the config: {detail}")
    check_finite(state.items(), source)
    model.load_state_dict(state, strict=True)


# --- saving ---------------------------------------------------------------------------
def training_metadata(model) -> dict[str, Any]:
    """``hub_metadata`` of the model (training steps, benchmark figures), steps refreshed from a live trainer."""
    metadata = {k: dict(v) for k, v in (getattr(model, "hub_metadata", None) or {}).items()}
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        metadata["training"] = {"global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
    return metadata


def full_config(model) -> dict[str, Any]:
    """``model.config()`` plus its metadata (``training``, ``metrics``): what ``config.json`` holds."""
    config = model.config()
    config.update({k: v for k, v in training_metadata(model).items() if v})
    return config


def _datamodule_of(model):
    """The live data module of the model's trainer, else one rebuilt from ``data_spec``, else None."""
    from flowzoo import registry

    trainer = getattr(model, "_trainer", None)
    if trainer is not None and getattr(trainer, "datamodule", None) is not None:
        return trainer.datamodule
    spec = getattr(model, "data_spec", None)
    if not spec:
        return None
    try:
        return registry.build("data", spec)
    except (FlowzooError, TypeError, ValueError, OSError):
        return None  # unknown or unbuildable here: the model is saved without tokenizer files


def save_pretrained(
    model,
    directory: str | os.PathLike,
    *,
    datamodule=None,
    card: bool = True,
    model_name: str | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` (components, arguments, version, training metadata),
    the data module's tokenizer files and a ``README.md`` model card into ``directory``."""
    from flowzoo.checkpoints.card import model_card
    from flowzoo.checkpoints.tokenizer import TOKENIZER_NAME, save_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    partial = directory / (WEIGHTS_NAME + ".partial")  # a crash never leaves a truncated model.safetensors
    save_file(state, partial, metadata={"format": "pt", "flowzoo_version": flowzoo.__version__})
    os.replace(partial, directory / WEIGHTS_NAME)
    os.chmod(directory / WEIGHTS_NAME, 0o644)  # safetensors writes 0600; the other files are world-readable too
    own = getattr(model, "tokenizer", None)  # the tokenizer the model was loaded with (its checkpoint's)
    live = getattr(getattr(model, "_trainer", None), "datamodule", None)
    if datamodule is None and (own is None or live is not None):  # own beats one rebuilt from files that may have changed
        datamodule = _datamodule_of(model)
    (directory / TOKENIZER_NAME).unlink(missing_ok=True)  # no stale tokenizer of another model
    tokenizer_files = []
    if datamodule is not None:
        try:
            tokenizer_files = save_tokenizer(datamodule, directory)
        except (FlowzooError, OSError) as err:  # e.g. a Hub tokenizer that cannot be fetched offline
            warnings.warn(f"saving {directory} without tokenizer files: {err}", stacklevel=2)
    if not tokenizer_files and own is not None and hasattr(own, "save"):
        own.save(str(directory / TOKENIZER_NAME))
        tokenizer_files = [TOKENIZER_NAME]
    config = full_config(model)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    if card:
        files = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, *tokenizer_files]
        model_card(config, model_name or directory.resolve().name, files).save(directory / CARD_NAME)
    return directory


# --- loading --------------------------------------------------------------------------
def resolve(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local directory as is; a Hub repo id as its snapshot folder in the Hugging Face cache
    (downloaded if missing and HF_HUB_OFFLINE is not set)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file: from_pretrained takes a save_pretrained directory or a Hub repo id (load a Lightning .ckpt with load_checkpoint)")
    repo_id = str(name_or_path)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise CheckpointError(f"{repo_id!r} is neither a local directory nor a Hub repo id (org/name)") from None
    where = f"Hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=HUB_FILES,
            library_name="flowzoo",
            library_version=flowzoo.__version__,
        )
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        raise CheckpointError(
            f"no local directory {repo_id!r}, and the {where} is not in the Hugging Face cache "
            f"({cache_dir or constants.HF_HUB_CACHE}) while downloads are off (HF_HUB_OFFLINE=1 or local_files_only); "
            "download it once with network access, or pass a directory"
        ) from None
    except (HfHubHTTPError, IncompleteSnapshotError) as err:
        raise CheckpointError(f"cannot fetch the {where}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    return Path(folder)


def load_directory(directory: Path, map_location: str = "cpu", model_class=None):
    """Rebuild a model from a save_pretrained directory: refused whole unless config and weights agree."""
    from flowzoo.checkpoints.tokenizer import load_tokenizer

    map_location = str(resolve_device(map_location, "map_location"))
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: not a flowzoo model directory")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    from flowzoo.checkpoints.reference import detect, flowzoo_weights, read_folder

    imported = None
    if detect(directory) is not None:  # a published checkpoint (MDLM's Hub format): converted on load
        config, state, imported = read_folder(directory)
        state = flowzoo_weights(config, state)
    model = build_model(config, model_class)
    if imported is None:
        try:
            state = load_file(weights_file, device=map_location)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{weights_file} is corrupt or truncated: {err}") from None
    load_state(model, state, str(weights_file))
    if imported is not None:
        model.hub_metadata["imported"] = imported
    model.tokenizer = load_tokenizer(directory)
    return model.eval()


def from_pretrained(
    name_or_path: str | os.PathLike,
    map_location: str = "cpu",
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
    model_class=None,
):
    """A model from a save_pretrained directory or a Hub repo id (safetensors only, never pickle).

    The model carries ``tokenizer`` (a ``tokenizers.Tokenizer`` or None) and ``hub_metadata``.
    """
    resolve_device(map_location, "map_location")  # before any download
    if revision is not None and Path(name_or_path).expanduser().is_dir():
        raise CheckpointError(f"revision={revision!r} applies to Hub repo ids, but {name_or_path} is a local directory")
    directory = resolve(
        name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )
    return load_directory(directory, map_location, model_class)


def unreadable_checkpoint_message(path, err: BaseException) -> str:
    """One line for a ``.ckpt`` that ``torch.load(weights_only=True)`` will not read. torch's own message is a
    page that suggests ``weights_only=False`` (running the file's pickled code); flowzoo never does that."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # the pickle would build an arbitrary object (a class, a function call): refused, nothing ran
        return (
            f"refused checkpoint {path}: its pickle holds an object that is not weights ({found.group(1)}); flowzoo reads "
            "Lightning checkpoints with torch.load(weights_only=True) and never runs pickled code"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", text, re.S)
    first = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
    return f"cannot read checkpoint {path}: {type(err).__name__}: {' '.join(first.split())[:300]}"


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """The dict of a flowzoo Lightning ``.ckpt``, read with ``torch.load(weights_only=True)``; anything else is refused."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, a pickle of something other than weights
        raise CheckpointError(unreadable_checkpoint_message(path, err)) from None
    if not isinstance(ckpt, dict) or "flowzoo" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a flowzoo Lightning checkpoint (no 'flowzoo' config)")
    return ckpt


CRITIC_KEY = "flowzoo_critic"  # dmd's critic in a training checkpoint: {"network": weights, "optimizer": its Adam}


def training_tensors(ckpt: dict[str, Any]):
    """(name, tensor) of what a resumed run reads besides ``state_dict``: the live weights an EMA callback keeps
    (``current_model_state``), the optimizer's state (``optimizer_states``) and dmd's critic (``CRITIC_KEY``)."""
    for name, tensor in (ckpt.get("current_model_state") or {}).items():
        yield f"current_model_state.{name}", tensor
    critic = ckpt.get(CRITIC_KEY) or {}
    for name, tensor in (critic.get("network") or {}).items():
        yield f"dmd critic {name}", tensor
    yield from _optimizer_tensors(critic.get("optimizer"), "dmd critic optimizer")
    for i, optimizer in enumerate(ckpt.get("optimizer_states") or []):
        yield from _optimizer_tensors(optimizer, f"optimizer_states[{i}]")


def _optimizer_tensors(optimizer: dict[str, Any] | None, prefix: str):
    """(name, tensor) of an optimizer state dict's per-parameter state (Adam's moments and step)."""
    for param, values in ((optimizer or {}).get("state") or {}).items():
        for key, tensor in (values or {}).items():
            yield f"{prefix} {key} of parameter {param}", tensor


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", model_class=None):
    """A model of ``model_class`` from a Lightning ``.ckpt`` (written by ``flowzoo fit``), a save_pretrained
    directory, or a Hub repo id."""
    from flowzoo.checkpoints.tokenizer import checkpoint_tokenizer

    text, path = str(path), Path(path)
    if path.is_dir():
        return from_pretrained(path, map_location, model_class=model_class)
    if not path.exists():
        if path.suffix in (".ckpt", ".pt", ".pth", ".safetensors") or text.startswith((".", "/", "~")):
            raise CheckpointError(f"checkpoint {path} does not exist")
        return from_pretrained(text, map_location, model_class=model_class)  # a Hub repo id
    ckpt = read_checkpoint(path, str(resolve_device(map_location, "map_location")))
    model = build_model(ckpt["flowzoo"], model_class)
    load_state(model, ckpt["state_dict"], str(path))
    model.tokenizer = checkpoint_tokenizer(ckpt, path)  # None for a checkpoint written before it was stored
    if "global_step" in ckpt:
        model.hub_metadata["training"] = {"global_step": int(ckpt["global_step"]), "epoch": int(ckpt.get("epoch", 0))}
    return model.eval()
