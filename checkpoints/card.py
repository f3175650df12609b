"""The model card (README.md) of a saved or published flowzoo model, through ``huggingface_hub.ModelCard``.

Metadata: ``library_name: flowzoo``, tags naming the method and its components, the data set
(a Hub data set id when the data module names one), training steps, and benchmark figures
(``model-index`` eval results) when the model carries them in ``hub_metadata["metrics"]``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

COMPONENT_KINDS = ("backbone", "path", "head", "objective", "sampler")
# objective name -> the family tag a Hub user searches for
FAMILY = {
    "flow_matching": "flow-matching",
    "lsd": "flow-map",
    "psd": "flow-map",
    "distill": "flow-map",
    "mdlm": "masked-diffusion",
    "sdtt": "masked-diffusion",
    "duo": "uniform-state-diffusion",
    "dcd": "uniform-state-diffusion",
    "ar": "autoregressive",
}
# entries of hub_metadata["metrics"] that describe the measurement rather than score the model
MEASUREMENT_KEYS = ("sampler", "nfe", "num_samples", "seed", "benchmark", "note")
# init_args keys of a data module that name a Hub data set
DATASET_KEYS = ("dataset", "dataset_id", "dataset_name", "hf_dataset", "path")
# ``datasets`` builder names (``load_dataset("json", data_files=...)``): they read local files, not a Hub data set
BUILDER_NAMES = frozenset(
    {"json", "text", "csv", "parquet", "arrow", "pandas", "sql", "xml", "generator", "cache", "spark", "webdataset",
     "hdf5", "imagefolder", "audiofolder", "videofolder", "pdffolder"}
)
# file names, not repo ids
DATA_FILE_SUFFIXES = (".txt", ".text", ".md", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")


def is_hub_dataset_id(value: Any) -> bool:
    """Whether ``value`` names a data set on the Hub (``org/name`` or a canonical ``name``): not a ``datasets``
    builder name (json, text, csv, parquet, arrow, ...), not a local file or folder, a valid repo id."""
    if not isinstance(value, str) or not value or value.lower() in BUILDER_NAMES:
        return False
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or value.lower().endswith(DATA_FILE_SUFFIXES):
        return False
    if os.path.exists(os.path.expanduser(value)):
        return False  # a local file or folder (the data module reads it, not the Hub)
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def dataset_id(data: dict[str, Any] | None) -> str | None:
    """The Hub data set id a data spec names (``{"init_args": {"dataset": "org/name"}}``), else None.

    Local data (``dataset="json"`` with ``data_files``, a file or folder path) names no Hub data set."""
    args = (data or {}).get("init_args") or {}
    for key in DATASET_KEYS:
        value = args.get(key)
        if is_hub_dataset_id(value):
            return value
    return None


def tags(config: dict[str, Any]) -> list[str]:
    objective = (config.get("objective") or {}).get("name", "")
    out = {"flowzoo", "text-generation", FAMILY.get(objective, objective.replace("_", "-"))}
    out |= {f"flowzoo-{kind}-{config[kind]['name']}".replace("_", "-") for kind in COMPONENT_KINDS if config.get(kind)}
    data = config.get("data") or {}
    if data.get("name"):
        out.add(f"flowzoo-data-{data['name']}".replace("_", "-"))
    return sorted(t for t in out if t)


def _number(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def card_data(config: dict[str, Any], model_name: str) -> ModelCardData:
    data = config.get("data") or {}
    dataset = dataset_id(data)
    metrics = (config.get("metrics") or {})
    figures = {k: v for k, v in metrics.items() if k.split("/")[0] not in MEASUREMENT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=dataset or f"flowzoo/{data.get('name', 'unknown')}",
            dataset_name=dataset or f"flowzoo {data.get('name', 'unknown')} data",
            metric_type=name,
            metric_value=_number(value),
        )
        for name, value in sorted(figures.items())
    ]
    training = config.get("training") or {}
    return ModelCardData(
        library_name="flowzoo",
        license="apache-2.0",
        pipeline_tag="text-generation",
        tags=tags(config),
        datasets=[dataset] if dataset else None,
        model_name=model_name,
        eval_results=eval_results or None,
        training_steps=training.get("global_step"),
        flowzoo_version=config.get("flowzoo_version"),
    )


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def body(config: dict[str, Any], model_name: str, files: list[str]) -> str:
    data = config.get("data") or {}
    training = config.get("training") or {}
    metrics = config.get("metrics") or {}
    objective = (config.get("objective") or {}).get("name", "?")
    components = _table(
        [(kind, f"`{config[kind]['name']}`", f"`{json.dumps(config[kind].get('init_args', {}), sort_keys=True)}`") for kind in COMPONENT_KINDS if config.get(kind)],
        ("component", "name", "arguments"),
    )
    parts = [
        f"# {model_name}",
        f"A [flowzoo](https://pypi.org/project/flowzoo/) language model: objective `{objective}` "
        f"({FAMILY.get(objective, objective)}), vocabulary of {config.get('vocab_size')} tokens, flowzoo {config.get('flowzoo_version')}.",
        "## Use",
        "```python\nfrom flowzoo.sampling import sample_from_checkpoint\n"
        f'print("\\n".join(sample_from_checkpoint("{model_name}", num_samples=8)["texts"]))\n```',
        f"```bash\nflowzoo sample --model {model_name} --num-samples 8\n```",
        "## Components",
        components,
        "## Training",
        (f"- data: `{data.get('name', 'unknown')}` `{json.dumps(data.get('init_args', {}), sort_keys=True)}`" if data else "- data: not recorded")
        + f"\n- training steps: {training.get('global_step', 'unknown')}"
        + (f", epochs: {training['epoch']}" if "epoch" in training else ""),
    ]
    scores = {k: v for k, v in metrics.items() if k not in MEASUREMENT_KEYS}
    if scores or metrics.get("note"):
        parts.append("## Benchmark")
        if scores:
            parts.append(_table([(k, str(_number(v))) for k, v in sorted(scores.items())], ("figure", "value")))
        how = [f"{metrics['num_samples']} samples" if "num_samples" in metrics else "", f"seed {metrics['seed']}" if "seed" in metrics else "",
               f"sampler `{metrics['sampler']}`" if "sampler" in metrics else "", f"NFE {metrics['nfe']}" if "nfe" in metrics else "",
               str(metrics["benchmark"]) if "benchmark" in metrics else ""]
        if any(how):
            parts.append("Measured with " + ", ".join(h for h in how if h) + ".")
        if metrics.get("note"):
            parts.append(f"Note: {metrics['note']}.")
    parts += ["## Files", "\n".join(f"- `{f}`" for f in sorted(files))]
    return "\n\n".join(parts) + "\n"


def model_card(config: dict[str, Any], model_name: str, files: list[str]) -> ModelCard:
    """A ModelCard whose YAML header is :func:`card_data` and whose text describes the model."""
    header = card_data(config, model_name).to_yaml()
    return ModelCard(f"---\n{header}\n---\n\n{body(config, model_name, files)}")
