"""``--ckpt_path`` of ``flowzoo fit|validate|test|predict``: the checkpoint is read and checked before Lightning
touches it, so a bad file is one line (as ``flowzoo sample`` gives), never a traceback from inside Lightning.

- :func:`read` refuses what ``load_checkpoint`` refuses (not a torch file, truncated, a pickle of objects, not a
  flowzoo checkpoint, config and weights that disagree, non-finite weights) and non-finite optimizer or EMA state;
- :func:`check_resumable`: ``fit`` resumes into the model the command line built, so its architecture must match
  (the checkpoint's settings, ``lr``, ``warmup_steps``, ``num_val_samples``, ..., are the defaults under its flags);
- :func:`model_defaults` / :func:`refuse_conflicts`: ``validate``/``test`` evaluate the checkpoint's own model. Its
  config is the default under the command line, so no architecture flags are needed; settings that leave the weights'
  meaning alone (the sampler and its options, ``num_val_samples``, the optimizer's settings) apply over it, and a
  backbone, path, head or objective setting that differs from the checkpoint's is refused, naming both values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowzoo import registry
from flowzoo.errors import CheckpointError, FlowzooError

LIGHTNING_CHOICES = ("best", "last", "hpc", "registry")  # resolved by Lightning itself, not a file
EVALUATION_COMMANDS = ("validate", "test")  # the checkpoint's model is evaluated (predict is refused: flowzoo.cli)
WEIGHT_COMPONENTS = ("backbone", "path", "head", "objective")  # what the weights mean; the sampler only reads them


def local_file(ckpt_path) -> Path | None:
    """The local file ``--ckpt_path`` names, or None for Lightning's own choices and remote paths."""
    if ckpt_path in (None, "", "null", "None") or str(ckpt_path) in LIGHTNING_CHOICES or "://" in str(ckpt_path):
        return None
    return Path(str(ckpt_path)).expanduser()


def check_file(path: Path, shown: str | None = None) -> None:
    """Refuse a ``--ckpt_path`` that is not a file: missing, or a folder (a ``save_pretrained`` one holds no
    optimizer or run state for Lightning)."""
    shown = shown if shown is not None else str(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {shown} is a folder; --ckpt_path takes a Lightning .ckpt file, e.g. runs/<name>/checkpoints/last.ckpt "
            "(a save_pretrained folder is read by flowzoo sample --checkpoint and flowzoo benchmark)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {shown} does not exist (--ckpt_path)")


def read(path: Path):
    """The model a ``--ckpt_path`` file holds (weights loaded, ``num_val_samples`` the run's), refused in one line if unusable."""
    from flowzoo.checkpoints.pretrained import build_model, check_finite, load_state, read_checkpoint, training_tensors
    from flowzoo.module import FlowLM

    check_file(path)
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["flowzoo"], FlowLM)
    load_state(model, ckpt["state_dict"], str(path))
    check_finite(training_tensors(ckpt), str(path))
    count = (ckpt.get("hyper_parameters") or {}).get("num_val_samples")
    if isinstance(count, int) and not isinstance(count, bool):
        model.num_val_samples = count
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


def model_defaults(saved, components: bool = True) -> dict[str, Any]:
    """The checkpoint's model as parser defaults: its settings (``model.lr``, ..., ``model.num_val_samples``) and,
    with ``components``, each ``model.<kind>`` (class path and arguments). Command-line flags and ``--config`` files
    then apply over it (where Lightning's own reading of ``--ckpt_path`` would put the checkpoint's settings over them)."""
    defaults: dict[str, Any] = {f"model.{key}": value for key, value in saved.config()["optim"].items()}
    defaults["model.num_val_samples"] = saved.num_val_samples
    for kind in (*WEIGHT_COMPONENTS, "sampler") if components else ():
        component = getattr(saved, kind)
        defaults[f"model.{kind}"] = {"class_path": registry.class_path(type(component)), "init_args": registry.spec(component)["init_args"]}
    return defaults


def refuse_conflicts(model_config, saved, path: Path) -> None:
    """Refuse a parsed ``model`` config whose backbone, path, head or objective differs from the checkpoint's.

    With :func:`model_defaults` in place every difference is a flag or ``--config`` value the user gave: it would
    evaluate weights under a meaning they were not trained for (or fail to load them), so it is refused in one line.
    """
    for kind in WEIGHT_COMPONENTS:
        given = _plain(model_config[kind])
        trained = registry.spec(getattr(saved, kind))
        if isinstance(given, str):
            given = {"class_path": given}
        name = _registered_name(kind, str(given.get("class_path")))
        if name != trained["name"]:
            _refuse(f"--model.{kind}={name}", f"{kind} {trained['name']!r}", path)
        want = _flatten(trained["init_args"])
        for key, value in _flatten(given.get("init_args") or {}).items():
            if key in want and not _same(value, want[key]):
                _refuse(f"--model.{kind}.{key}={_show(value)}", f"{key}={_show(want[key])}", path)


def _refuse(flag: str, trained: str, path: Path) -> None:
    raise CheckpointError(
        f"{flag} conflicts with checkpoint {path}, trained with {trained}: validate/test evaluate the checkpoint's own "
        "model; drop the setting (the sampler, its options and num_val_samples do apply)"
    )


def _registered_name(kind: str, class_path: str) -> str:
    try:
        return registry.get(kind, class_path).registry_name
    except FlowzooError:
        return class_path


def _plain(value: Any) -> Any:
    """A parsed jsonargparse value as plain data: Namespaces as dicts, tuples as lists, paths as strings."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _flatten(args: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"flow_map": {"boundary": 0.03}}`` -> ``{"flow_map.boundary": 0.03}``."""
    flat: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    return _plain(a) == _plain(b)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def evaluation_model(model, saved, path: Path):
    """The model validate/test evaluate: the command line's, built over the checkpoint's config (Lightning loads the
    checkpoint's weights into it), on data of the checkpoint's vocabulary."""
    if model.vocab_size != saved.vocab_size:
        raise CheckpointError(
            f"checkpoint {path} (--ckpt_path) has a vocabulary of {saved.vocab_size} tokens but the data module has {model.vocab_size}: "
            "pass the data it was trained on"
        )
    return model
