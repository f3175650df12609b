"""The published MDLM / Duo / FLM checkpoints as flowzoo configs and ``ddit`` weights (the format; no model is built).

Every source is the DDiT of that family under the reference's own parameter names, so the conversion is a
rename (``backbone.`` prefix) onto the ``ddit`` backbone plus a config naming the matching flowzoo parts:

| source | recognised by | flowzoo model |
| --- | --- | --- |
| MDLM on the Hub (``kuleshov-group/mdlm-owt``) | ``config.json`` with ``model_type: mdlm`` + ``model.safetensors`` | ``masked`` path (log-linear, eps 1e-3), ``mdlm``, ``ancestral`` |
| MDLM / Duo / FLM reference folders | ``config.json`` with ``reference_config`` + ``model.safetensors`` | by the reference's ``algo.name`` |
| Lightning ``.ckpt`` of those repos | a file | refused unless ``trust_pickle`` |

Duo becomes a model on flowzoo's ``uniform`` (uniform-state) path, sampled with ``uniform_ancestral``.
:mod:`flowzoo.checkpoints.pretrained` reads MDLM's Hub format with :func:`detect` / :func:`read_folder` on load;
:mod:`flowzoo.checkpoints.importer` (``flowzoo import``) writes any source as a flowzoo folder.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import flowzoo
from flowzoo.errors import CheckpointError
from flowzoo.validation import check_choice

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
KINDS = ("mdlm", "duo", "flm", "flm_map")
# defaults of the published runs: the tokenizer and sequence length of each corpus
TOKENIZERS = {"openwebtext": ("gpt2", 1024), "lm1b": ("bert-base-uncased", 128)}


# --- what the source is --------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable JSON file: {err}") from None


def detect(directory: str | os.PathLike) -> str | None:
    """``"hf_mdlm"`` (MDLM's Hub format), ``"reference"`` (a reference-code folder) or None (not importable)."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        return None
    config = read_json(config_file)
    if "flowzoo_version" in config:
        return None
    if config.get("model_type") == "mdlm":
        return "hf_mdlm"
    if isinstance(config.get("reference_config"), dict):
        return "reference"
    return None


def kind_of_reference(ref: dict[str, Any]) -> str:
    """mdlm, duo, flm or flm_map from a reference config (its ``algo`` section, or MDLM's top-level keys)."""
    algo = ref.get("algo") or {}
    name = str(algo.get("name", ref.get("parameterization", "mdlm")))
    if name.startswith("flm"):
        return "flm_map" if (algo.get("double_temb") or "distill" in name) else "flm"
    if name in ("mdlm", "subs") or ref.get("diffusion") == "absorbing_state":
        return "mdlm"
    if name.startswith("duo") or name in ("distillation", "rectification", "dos_finetune", "ot-finetune", "dmf"):
        return "duo"
    raise CheckpointError(f"cannot tell which model algo.name {name!r} is; expected one of mdlm, duo*, flm*")


# --- flowzoo configs -----------------------------------------------------------------------
def _backbone(width, depth, heads, cond_dim, dropout, **extra) -> dict[str, Any]:
    args = {"width": int(width), "depth": int(depth), "heads": int(heads), "cond_dim": int(cond_dim), "dropout": float(dropout)}
    args.update(extra)
    return {"name": "ddit", "init_args": args}


def flowzoo_config(kind: str, arch: dict[str, Any], vocab_rows: int, *, time_conditioning: bool = True,
                   second_time: bool = False, loss_weighting: bool = False, eps: float = 1e-3,
                   steps: int | None = None) -> dict[str, Any]:
    """The flowzoo config of an imported model: ``arch`` holds width, depth, heads, cond_dim, dropout;
    ``vocab_rows`` is the reference's embedding rows (MDLM's include [MASK], the last id)."""
    check_choice(kind, KINDS, "model kind", CheckpointError)
    base = {"flowzoo_version": flowzoo.__version__, "head": {"name": "categorical", "init_args": {}}, "data": None}
    if kind == "mdlm":
        return {
            **base,
            "vocab_size": vocab_rows - 1,  # [MASK] is flowzoo's extra input id V = the reference's mask_index
            "backbone": _backbone(**arch, extra_outputs=1, time_scale=-math.log(eps)),
            "path": {"name": "masked", "init_args": {"eps": eps, "time_conditioning": bool(time_conditioning)}},
            "objective": {"name": "mdlm", "init_args": {}},
            "sampler": {"name": "ancestral", "init_args": {"steps": steps or 1000}},
        }
    if kind == "duo":  # Duo feeds sigma = -log alpha; its soft (curriculum) inputs go through a softmax
        return {
            **base,
            "vocab_size": vocab_rows,
            "backbone": _backbone(**arch, soft_input="softmax", time_scale=-math.log(eps)),
            "path": {"name": "uniform", "init_args": {"eps": eps}},
            # a trained Duo model is past its curriculum: fine-tuning it is the plain NELBO
            "objective": {"name": "duo", "init_args": {"curriculum_start": 0, "curriculum_end": 0}},
            "sampler": {"name": "uniform_ancestral", "init_args": {"steps": steps or 1000}},
        }
    if not time_conditioning:
        raise CheckpointError("an FLM model without time conditioning has no flowzoo path (flowzoo's linear path always feeds the time)")
    flow = kind == "flm"
    # FLM's maps: forward(x, s, t) = emb(s) + emb'(t) with its second embedder, else emb(s) + emb(t)
    source_time = "none" if flow else ("embedder" if second_time else "shared")
    backbone = _backbone(**arch, attn_softcap=50.0, soft_input="linear", source_time=source_time, loss_weighting=bool(loss_weighting))
    return {
        **base,
        "vocab_size": vocab_rows,
        "backbone": backbone,
        # FLM: x_t = (1 - g) noise + g onehot, noise ~ N(0, I), the network sees alpha(g) = flowzoo's tau(g)
        "path": {"name": "linear", "init_args": {"sigma": 1.0, "time": "tau"}},
        "objective": {"name": "flow_matching" if flow else "lsd", "init_args": {}},
        "sampler": {"name": "euler", "init_args": {"steps": steps or 1024}} if flow else {"name": "flow_map", "init_args": {"steps": steps or 1}},
    }


# --- reading weights -----------------------------------------------------------------------
def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DDiT's own keys: ``backbone.`` stripped (Lightning modules and MDLM's Hub model keep it there),
    torch.compile's ``_orig_mod.`` removed, teachers and other modules dropped."""
    clean = {k.replace("._orig_mod.", ".").removeprefix("_orig_mod."): v for k, v in state.items() if not k.startswith("teacher")}
    if any(k.startswith("backbone.") for k in clean):
        clean = {k.removeprefix("backbone."): v for k, v in clean.items() if k.startswith("backbone.")}
    if "vocab_embed.embedding" not in clean:
        raise CheckpointError("no 'vocab_embed.embedding' among the weights: not a checkpoint of the MDLM / Duo / FLM DiT")
    return clean


def parameter_order(config: dict) -> list[str]:
    """Parameter names of the ``ddit`` of ``config`` in ``named_parameters()`` order, which is the references'
    order (the order of their EMA ``shadow_params``)."""
    from flowzoo import registry

    backbone = registry.build("backbone", config["backbone"])
    extra = 1 if config.get("path", {}).get("name") == "masked" else 0
    with torch.device("meta"):
        backbone.bind(config["vocab_size"] + extra, config["vocab_size"])
    return [name for name, _ in backbone.named_parameters()]


def with_ema(state: dict[str, torch.Tensor], ema: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """Replace the parameters ``names`` (in the references' ``named_parameters()`` order) by the EMA's
    ``shadow_params``, a list in that order (noise-schedule parameters, if any, follow and are ignored)."""
    shadow = list(ema.get("shadow_params", [])) if isinstance(ema, dict) else []
    unknown = sorted(set(names) - set(state))
    if unknown:
        raise CheckpointError(f"the weights lack parameters the architecture has: {unknown[:5]}")
    if len(shadow) < len(names):
        raise CheckpointError(f"the EMA holds {len(shadow)} tensors for {len(names)} parameters: it does not belong to these weights")
    out = dict(state)
    for name, value in zip(names, shadow):
        if tuple(value.shape) != tuple(state[name].shape):
            raise CheckpointError(f"EMA tensor for {name} has shape {tuple(value.shape)}, the weights {tuple(state[name].shape)}")
        out[name] = value
    return out


def _architecture(state: dict[str, torch.Tensor], heads: int, dropout: float) -> dict[str, Any]:
    """width, depth, cond_dim from the weights' shapes; heads and dropout are not in the shapes."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    width = state["vocab_embed.embedding"].shape[1]
    cond_dim = state["sigma_map.mlp.0.weight"].shape[0]
    return {"width": int(width), "depth": depth, "heads": int(heads), "cond_dim": int(cond_dim), "dropout": float(dropout)}


def _flags(state: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {
        "second_time": any(k.startswith("sigma_map_prime.") for k in state),
        "loss_weighting": any(k.startswith("learnable_loss_weighting.") for k in state),
    }


def _plain(config: Any) -> dict[str, Any]:
    """An OmegaConf config (or any mapping) as plain dicts."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:
        pass
    if isinstance(config, dict):
        return {k: _plain(v) if isinstance(v, dict) else v for k, v in config.items()}
    raise CheckpointError(f"the checkpoint's config is a {type(config).__name__}, not a mapping")


def _from_reference_config(ref: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(flowzoo config, provenance) from a reference-code config (``model``, ``algo``, ``data`` sections)."""
    model, algo, data = ref.get("model") or {}, ref.get("algo") or {}, ref.get("data") or {}
    if "n_heads" not in model:
        raise CheckpointError(f"{source}: the reference config has no model.n_heads")
    kind = kind_of_reference(ref)
    noise = str((ref.get("noise") or {}).get("type", "loglinear")).replace("-", "")
    if kind in ("mdlm", "duo") and noise != "loglinear":
        raise CheckpointError(f"{source}: noise schedule {noise!r}; flowzoo's masked path has the log-linear schedule only")
    tc = algo.get("time_conditioning", ref.get("time_conditioning", True))
    arch = _architecture(state, model["n_heads"], model.get("dropout", 0.1))
    eps = float((ref.get("noise") or {}).get("eps", (ref.get("training") or {}).get("sampling_eps", 1e-3)))
    config = flowzoo_config(kind, arch, state["vocab_embed.embedding"].shape[0], time_conditioning=bool(tc), eps=eps, **_flags(state))
    meta = {"kind": kind, "from": source, "reference": ref.get("reference") or algo.get("name", kind)}
    tokenizer = data.get("tokenizer_name_or_path")
    if tokenizer:
        meta["tokenizer"] = tokenizer
    if model.get("length"):
        meta["seq_len"] = int(model["length"])
    return config, meta


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the importer reads safetensors weights (a .bin or .ckpt pickle is not read)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated: {err}") from None


def read_folder(directory: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(flowzoo config, DDiT state, provenance) from an MDLM Hub folder or a reference folder."""
    found = detect(directory)
    if found is None:
        raise CheckpointError(
            f"{directory} is not an importable checkpoint: expected MDLM's Hub format (config.json with model_type 'mdlm' "
            "and model.safetensors) or a reference-code folder (config.json with reference_config); a flowzoo folder needs no import"
        )
    config = read_json(directory / "config.json")
    state = backbone_state(read_safetensors(directory / "model.safetensors"))
    if found == "hf_mdlm":  # MDLM's transformers model: config keys hidden_dim, n_blocks, n_heads, cond_dim, ...
        missing = [k for k in ("n_heads", "vocab_size") if k not in config]
        if missing:
            raise CheckpointError(f"{directory}/config.json (model_type mdlm) lacks {missing}")
        arch = _architecture(state, config["n_heads"], config.get("dropout", 0.1))
        rows = state["vocab_embed.embedding"].shape[0]
        if rows != int(config["vocab_size"]):
            raise CheckpointError(f"{directory}: config vocab_size {config['vocab_size']} but the embedding has {rows} rows")
        fz = flowzoo_config("mdlm", arch, rows, time_conditioning=bool(config.get("time_conditioning", False)))
        meta = {"kind": "mdlm", "from": str(directory), "reference": "kuleshov-group/mdlm (Hub format)", "tokenizer": "gpt2",
                "seq_len": int(config.get("model_length", 1024))}
        return fz, state, meta
    if found == "reference":
        fz, meta = _from_reference_config(config["reference_config"], state, str(directory))
        if isinstance(config.get("reference"), dict):
            meta["reference"] = {k: config["reference"][k] for k in ("repo", "commit", "file") if k in config["reference"]}
    return fz, state, meta


def read_pickle(path: Path, *, trust_pickle: bool, use_ema: bool = True) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(flowzoo config, DDiT state, provenance) from a Lightning ``.ckpt`` of the MDLM / Duo / FLM code.

    Refused unless ``trust_pickle``: such a file is a pickle. It is read with ``torch.load(weights_only=True)``
    when that suffices; the references store their OmegaConf config and tokenizer as objects, which only
    a full unpickling (which runs code named in the file) can read.
    """
    if not trust_pickle:
        raise CheckpointError(
            f"refused {path}: a Lightning checkpoint is a pickle, and unpickling can run code stored in the file. "
            "Import it only if you trust its origin, with --trust-pickle (Python: trust_pickle=True); "
            "the output is safetensors"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        how = "weights_only"
    except Exception as safe_err:  # objects beyond tensors and containers: needs the full unpickler
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller (--trust-pickle)
            how = "full unpickling (--trust-pickle)"
        except Exception as err:
            raise CheckpointError(
                f"cannot read {path} even as a trusted pickle: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                f"(the weights-only reader said: {str(safe_err).strip().splitlines()[0][:200]}); the reference code's "
                "packages (omegaconf, transformers) may be needed"
            ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    state = backbone_state(ckpt["state_dict"])
    hparams = ckpt.get("hyper_parameters") or {}
    if "config" not in hparams:
        raise CheckpointError(f"{path} has no hyper_parameters.config: cannot tell the architecture and the algorithm")
    config, meta = _from_reference_config(_plain(hparams["config"]), state, str(path))
    used_ema = bool(use_ema and ckpt.get("ema"))
    if used_ema:
        state = with_ema(state, ckpt["ema"], parameter_order(config))
    meta.update({"loaded_with": how, "ema": used_ema, "global_step": int(ckpt.get("global_step", 0))})
    return config, state, meta



def fill_buffers(config: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``rotary_emb.inv_freq`` (a buffer some exports omit) from a freshly built backbone."""
    if "rotary_emb.inv_freq" in state:
        return state
    from flowzoo.backbones.ddit import Rotary

    args = config["backbone"]["init_args"]
    return {**state, "rotary_emb.inv_freq": Rotary(args["width"] // args["heads"]).inv_freq}


def flowzoo_weights(config: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The FlowLM state dict of imported ``ddit`` weights: ``backbone.`` prefixed, buffers filled."""
    return {f"backbone.{k}": v for k, v in fill_buffers(config, state).items()}
