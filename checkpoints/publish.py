"""``flowzoo publish``: a trained model (Lightning .ckpt, directory or repo id) to a Hub repo, with its card figures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from flowzoo.errors import CheckpointError


def measure(model, num_samples: int, seed: int = 0) -> dict[str, Any]:
    """Benchmark figures of the model's own sampler: its data module's sample metrics, NFE, sample count.

    The data module's figures need its files (a corpus's word list, a tokenizer trained from them); where they have
    moved or are gone, the samples are decoded with the model's own tokenizer, only the figures that need no corpus
    (the data's ``metric`` of the texts) are measured, and ``note`` says what was skipped and why.
    """
    from flowzoo import registry
    from flowzoo.sampling import decode_and_score, training_data, training_length

    if num_samples <= 0 or not model.data_spec:
        return {}
    data, unavailable = training_data(model)
    length = training_length(model, data)
    if length is None:
        return {"note": f"no figures measured: the model does not record its data's sequence length ({unavailable})"}
    out = model.generate(num_samples, length, seed=seed)
    _, metrics, unavailable = decode_and_score(model, data, out.tokens.cpu(), unavailable=unavailable)
    figures = {k: float(v) for k, v in (metrics or {}).items() if v is not None}  # None: not applicable
    spec = registry.spec(model.sampler)
    args = ", ".join(f"{k}={v}" for k, v in sorted(spec["init_args"].items()))
    figures.update({"nfe": int(out.nfe), "num_samples": num_samples, "seed": seed, "sampler": f"{spec['name']}({args})"})
    if unavailable is not None:
        kept = "only the data's own metric was measured" if metrics else "they were skipped"
        figures["note"] = f"the data's sample figures need the training data, which is not available here ({unavailable}): {kept}"
    return figures


def benchmark_figures(results: dict[str, Any], checkpoint: str, model_name: str | None = None) -> dict[str, Any]:
    """This model's rows of a ``flowzoo benchmark`` results.json, as ``{"<metric>/<sampler>-<steps>": value}``.

    The model is the one named ``model_name``, else the one benchmarked from the same checkpoint path.
    """
    models = results.get("models") or {}
    if model_name is not None:
        names = [model_name] if model_name in models else []
    else:
        target = Path(checkpoint).expanduser().resolve()
        names = [n for n, m in models.items() if Path(str(m.get("checkpoint", ""))).expanduser().resolve() == target]
    if not names:
        raise CheckpointError(
            f"the benchmark results hold no model {'named ' + repr(model_name) if model_name else 'benchmarked from ' + checkpoint}; "
            f"models there: {', '.join(models) or 'none'} (choose one with --benchmark-model)"
        )
    figures: dict[str, Any] = {}
    for row in results.get("rows") or []:
        if row.get("model") not in names:
            continue
        setting = f"{row.get('sampler_name')}-{row.get('steps')}"
        figures.update({f"{k}/{setting}": v for k, v in (row.get("metrics") or {}).items() if v is not None})
        figures[f"nfe/{setting}"] = row.get("nfe")
        if row.get("tokens_per_second"):
            figures[f"tokens_per_second/{setting}"] = row["tokens_per_second"]
    env = results.get("environment") or {}
    figures["benchmark"] = f"flowzoo benchmark {results.get('name', '')!s} on {env.get('device', '?')}, judge {results.get('judge') or 'none'}"
    return figures


def read_metrics(path: str | os.PathLike, checkpoint: str = "", model_name: str | None = None) -> dict[str, Any]:
    """Figures from a JSON file: a flat ``{"name": value}`` object, or a ``flowzoo benchmark`` results.json."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read benchmark figures from {path}: {err}") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} must hold a JSON object of figures, e.g. {{\"valid_transitions\": 0.98}}")
    if "rows" in metrics and "models" in metrics:
        return benchmark_figures(metrics, checkpoint, model_name)
    return metrics


def prepare(checkpoint: str, eval_samples: int = 0, metrics_file: str | None = None, seed: int = 0, benchmark_model: str | None = None):
    """Load ``checkpoint`` and attach its benchmark figures (measured now and/or read from ``metrics_file``)."""
    from flowzoo.checkpoints.load import load_checkpoint

    model = load_checkpoint(checkpoint)
    figures = dict((model.hub_metadata or {}).get("metrics") or {})
    if eval_samples > 0:
        figures.pop("note", None)  # a note of an earlier measurement is replaced by this one's (or none)
        figures.update(measure(model, eval_samples, seed))
    if metrics_file:
        figures.update(read_metrics(metrics_file, checkpoint, benchmark_model))
    if figures:
        model.hub_metadata["metrics"] = figures
    return model


def publish(
    checkpoint: str,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str = "Upload flowzoo model",
    token: str | None = None,
    eval_samples: int = 0,
    metrics_file: str | None = None,
    output_dir: str | None = None,
    benchmark_model: str | None = None,
) -> dict[str, Any]:
    """Push the model to ``repo_id`` (or, with ``output_dir``, only write the folder that would be uploaded)."""
    model = prepare(checkpoint, eval_samples, metrics_file, benchmark_model=benchmark_model)
    note = ((model.hub_metadata or {}).get("metrics") or {}).get("note")
    if note:
        print(f"flowzoo: note: {note}", file=sys.stderr)
    if output_dir is not None:
        model.save_pretrained(output_dir, model_card_kwargs={"model_name": repo_id})
        return {"repo_id": repo_id, "saved": str(output_dir), "files": sorted(os.listdir(output_dir)), "uploaded": False}
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        url = model.push_to_hub(repo_id, private=private, branch=branch, commit_message=commit_message, token=token)
    except OfflineModeIsEnabled:
        raise CheckpointError(f"cannot upload to {repo_id}: HF_HUB_OFFLINE is set; unset it (or use --output-dir to only write the folder)") from None
    except (HfHubHTTPError, HFValidationError, LocalTokenNotFoundError) as err:
        raise CheckpointError(f"upload to {repo_id} failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    return {"repo_id": repo_id, "commit": str(url), "uploaded": True}
