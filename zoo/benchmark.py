"""``flowzoo benchmark``: every checkpoint x every sampler setting, same samples, same seeds, one table.

For each row (a model and a sampler spec) the harness draws ``num_samples`` sequences of ``length``
tokens in batches of ``batch_size``, batch b with seed ``batch_seed(seed, b)`` = seed · 10^6 + b (the same for every
row; two sampling seeds share no batch), and records:

- quality: unigram entropy; generative perplexity under the judge (if one is configured); on
  ``markov`` the valid-transition rate, exact NLL per transition, its gap to the entropy rate and the bigram TV to the chain;
  the data module's ``sample_metrics`` (its own figures and its ``metric``'s; None = not applicable); the share of distinct samples;
- NFE as the sampler reports it (per batch);
- wall-clock per batch: the median over the timed batches (every quality batch, and extra ones up to
  ``repeats``), after ``warmup`` untimed batches; tokens per second = batch_size * length / median;
- peak memory of one batch beyond what was allocated before it (the weights): on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the largest rise of the running sum of the CPU allocator's
  allocations and frees recorded by ``torch.profiler`` (``profile_memory=True``) during the first warm-up
  batch, from its lowest point before it (tensor memory only, like the CUDA figure; not the process RSS).

Per model it also records the validation loss the model logs (its objective on the first ``val_batches``
validation batches, seeded as in training) and exp of it, a perplexity bound for ``mdlm`` and ``ar``.
Writes ``results.json``, ``results.md`` and ``results.png`` (quality against NFE and against wall-clock).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import flowzoo
from flowzoo import registry
from flowzoo.errors import DataError, FlowzooError
from flowzoo.judges import EOS_CONVENTIONS
from flowzoo.kept_samples import write_samples
from flowzoo.metrics import CompletionPerplexity, GenerativePerplexity, MarkovQuality, UnigramEntropy, ValidationLoss
from flowzoo.progress import progress
from flowzoo.sampling import batch_seed, refuse_ignored_options
from flowzoo.validation import check_choice

DEFAULTS: dict[str, Any] = {
    "name": "benchmark",
    "output": "benchmark_results",
    "num_samples": 64,
    "batch_size": 32,
    "length": None,  # default: the first model's training length
    "seed": 0,
    "device": "cpu",
    "threads": None,
    "warmup": 1,
    "repeats": 3,
    "judge": None,  # a transformers name/path (gpt2-large) or a flowzoo AR checkpoint
    "judge_batch_size": 16,
    "judge_text": "decode",  # decode: the data module's text (as the examples show); raw: every id, special tokens as strings (MDLM/Duo)
    "judge_eos": "all",  # all: every judge token scored; first: EOS after the first not scored (MDLM/Duo); truncate: cut at the first EOS
    "save_samples": False,  # also write samples.json.gz (each row's judge texts), so another judge can re-score them: --rescore
    "val_batches": 4,
    # CPU peak memory (torch.profiler) only for samplers of at most this many steps: the profiler keeps every op's
    # event, about 7 MiB a step of a 64 x 64 batch (3.5 GB at 512 steps), so longer samplers' rows say "not measured"
    "cpu_memory_max_steps": 256,
    "reference": True,  # a row scoring real validation sequences with the same metrics
    "plot_metrics": None,
    "prompts_from": None,  # conditional rows: "validation" (held-out rows' first prompt_len tokens) or a file of prompts
    "prompt_len": 8,  # known tokens per prompt; the rest of each sequence is generated
    "headline": {"reference": {"sampler": "flow_map", "steps": 1}, "baseline": {"sampler": "ancestral", "steps": 8}, "metric": None},
    "models": [],
}
# metric name -> True when higher is better; the table's column order
METRICS = {
    "gen_ppl": False,
    "entropy": True,
    "valid_transitions": True,
    "nll": False,
    "nll_gap": False,
    "bigram_tv": False,
    "word_validity": True,
    "num_words": True,  # beside word validity: a high validity over few words says little
    "empty_samples": False,
    "unique_words": True,
    "distinct": True,
}
HIDDEN = ("entropy_rate",)  # constant figures of the data, not of the samples
JUDGE_TEXTS = ("decode", "raw")

LIKELIHOOD_OBJECTIVES = ("ar", "mdlm")  # objectives whose loss is an NLL or a NELBO (exp = perplexity bound)


class BenchmarkConfigError(FlowzooError, ValueError):
    """A benchmark config that cannot be run."""


# --- config -----------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The YAML config merged over :data:`DEFAULTS`, then ``overrides`` (those not None)."""
    config = json.loads(json.dumps(DEFAULTS))
    if path is not None:
        try:
            given = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BenchmarkConfigError(f"cannot read the benchmark config {path}: {err}") from None
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise BenchmarkConfigError(f"unknown keys in {path}: {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        config.update(given)
    config.update({k: v for k, v in overrides.items() if v is not None})
    if not config["models"]:
        raise BenchmarkConfigError("the benchmark config lists no models (a 'models' list of {name, checkpoint, samplers})")
    for key in ("num_samples", "batch_size", "repeats"):
        if int(config[key]) < 1:
            raise BenchmarkConfigError(f"{key} must be at least 1, got {config[key]}")
    if int(config["cpu_memory_max_steps"]) < 0:
        raise BenchmarkConfigError(f"cpu_memory_max_steps must be at least 0, got {config['cpu_memory_max_steps']}")
    check_choice(config["judge_text"], JUDGE_TEXTS, "judge_text", BenchmarkConfigError)
    check_choice(config["judge_eos"], EOS_CONVENTIONS, "judge_eos", BenchmarkConfigError)
    for entry in config["models"]:
        if not isinstance(entry, dict) or "checkpoint" not in entry:
            raise BenchmarkConfigError(f"each model needs a 'checkpoint' (and optionally 'name', 'samplers'): got {entry!r}")
    names = [model_name(entry) for entry in config["models"]]  # rows and results are filed by name: two alike would merge
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BenchmarkConfigError(f"two models share the name {', '.join(map(repr, repeated))} (a model's name is its 'name', "
                                   "else its checkpoint's file or folder name): give each a 'name' of its own")
    return config


def model_name(entry: dict) -> str:
    """The name a model's rows are filed under: its ``name``, else its checkpoint's file or folder name."""
    return entry.get("name") or Path(entry["checkpoint"]).stem


def sampler_grid(entries: list[Any] | None) -> list[dict[str, Any] | None]:
    """Expand ``[{name: euler, steps: [8, 16], init_args: {...}}, {name: ar}]`` into sampler specs (None: the model's own)."""
    specs: list[dict[str, Any] | None] = []
    for entry in entries or [None]:
        if entry is None or entry == "default" or (isinstance(entry, dict) and entry.get("name") == "default"):
            specs.append(None)
            continue
        if isinstance(entry, str):
            entry = {"name": entry}
        if "name" not in entry:
            raise BenchmarkConfigError(f"a sampler entry needs a 'name': got {entry!r}")
        cls = registry.get("sampler", entry["name"])  # unknown names fail here, listing the valid ones
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}
        steps = entry.get("steps")
        for value in steps if isinstance(steps, list) else [steps]:
            args = dict(entry.get("init_args") or {})
            if value is not None:
                args["steps"] = value
            for key, wrong in registry.not_numbers(cls, args)[:1]:  # refused here, not as a comparison error mid-run
                raise BenchmarkConfigError(f"sampler {entry['name']!r}: {key} must be a number, got {wrong!r}")
            given = args.get("steps")  # from the entry's steps or its init_args
            if given is not None:
                if isinstance(given, bool) or not (isinstance(given, int) or (isinstance(given, float) and given.is_integer())):
                    raise BenchmarkConfigError(f"sampler entry {entry!r}: steps must be a whole number, got {given!r}")
                args["steps"] = int(given)
            # an option the sampler would ignore (temperature under argmax, steps beside times) is refused, not run
            changed = {k: v for k, v in args.items() if k not in defaults or defaults[k] != v or (k == "steps" and value is not None)}
            refuse_ignored_options({"name": entry["name"], "init_args": {**defaults, **args}}, changed)
            specs.append({"name": entry["name"], "init_args": args})
    return specs


# --- measuring ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocator_peak(deltas) -> int:
    """The largest rise of the running sum of allocations (+) and frees (-), each from its lowest point before it:
    a free of memory allocated before the window (garbage collected while it ran) is not credited against what the
    window allocates later, so it cannot hide the peak. Empty or only frees: 0."""
    peak, low = 0, 0
    for total in itertools.accumulate(deltas):
        low = min(low, total)
        peak = max(peak, total - low)
    return peak


def cpu_peak_bytes(fn) -> tuple[Any, int]:
    """(fn(), :func:`allocator_peak` of the CPU tensor allocations and frees while fn ran), via torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return result, allocator_peak(getattr(e, "self_cpu_memory_usage", 0) or 0 for e in events)


def peak_memory(fn, device: torch.device) -> tuple[Any, int, str]:
    """(fn(), bytes, method): peak memory allocated while fn ran beyond what was allocated before."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        return result, torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    result, peak = cpu_peak_bytes(fn)
    return result, peak, "torch.profiler CPU allocator peak"


def timed(fn, device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


class TokenizerText:
    """Stands in for the data module of a model known only by its tokenizer (an imported MDLM / FLM model, or a
    model whose training files have moved): samples are decoded with its ``tokenizer.json`` for the judge and the
    examples; the only data figures are those of ``source``'s ``metric`` on the decoded text (they need no corpus)."""

    def __init__(self, tokenizer, source=None) -> None:
        self.tokenizer = tokenizer
        self.source = source  # the training data module whose files are not here (None: the model records none)

    @classmethod
    def of(cls, model, source=None) -> "TokenizerText | None":
        tokenizer = getattr(model, "tokenizer", None)
        return cls(tokenizer, source) if tokenizer is not None else None

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Special tokens dropped (``tokenizers``' default); for a data module's stand-in, as it decodes
        (:func:`flowzoo.data.text.decode_rows`: EOS written as its token)."""
        if self.source is not None:
            from flowzoo.data.text import decode_rows

            return decode_rows(self.tokenizer, tokens.tolist())
        return self.tokenizer.decode_batch(tokens.tolist())

    def decode_raw(self, tokens: torch.Tensor) -> list[str]:
        """Special tokens written as their strings (``[CLS]``, ``[SEP]``), as MDLM / Duo decode their samples."""
        return self.tokenizer.decode_batch(tokens.tolist(), skip_special_tokens=False)

    def evaluate_samples(self, tokens: torch.Tensor) -> dict[str, float]:
        return {}

    def sample_metrics(self, tokens: torch.Tensor) -> dict[str, float | None]:
        if self.source is None or not getattr(self.source, "metric", None):
            return {}
        return self.source.text_metrics(self.decode(tokens))  # a metric of decoded text needs no corpus


def named_path(value: str) -> tuple[str, str]:
    """``NAME=PATH`` as (name, path). Either side may hold '=' (a label "λ=1", a checkpoint "epoch=0-step=50.ckpt"):
    the split is at the first '=' after which an existing local path follows, else at the first '=' (a Hub id)."""
    cuts = [i for i, c in enumerate(value) if c == "="]
    for i in cuts:
        if i and value[i + 1:] and Path(value[i + 1:]).exists():
            return value[:i], value[i + 1:]
    if not cuts or not value[:cuts[0]] or not value[cuts[0] + 1:]:
        raise ValueError(f"expected NAME=PATH, got {value!r}")
    return value[:cuts[0]], value[cuts[0] + 1:]


def method_checkpoint(value: str, methods: tuple[str, ...]) -> tuple[str, str, str]:
    """``[LABEL/]METHOD=PATH`` as (label, method, path), '' without a label; METHOD must be one of ``methods``.

    A malformed value raises ValueError naming the form and the methods (argparse shows it for a ``type=``)."""
    try:
        name, path = named_path(value)
    except ValueError:
        name, path = "", ""
    label, _, method = name.rpartition("/")
    if not path or method not in methods:
        raise ValueError(f"expected [LABEL/]METHOD=PATH with METHOD one of {', '.join(methods)}, got {value!r}")
    return label, method, path


def quality_metrics(data, judge, judge_eos: str = "all") -> dict[str, Any]:
    metrics: dict[str, Any] = {"entropy": UnigramEntropy()}
    if getattr(data, "chain", None) is not None:
        metrics["markov"] = MarkovQuality(data.chain)
    if judge is not None:
        metrics["gen_ppl"] = GenerativePerplexity(judge, eos=judge_eos)
    return metrics


def judge_texts(tokens: torch.Tensor, data, judge_text: str = "decode") -> list[str]:
    """The text of samples (N, L) that the judge reads: the data module's ``decode`` (``decode``: special tokens as the
    data writes them, e.g. dropped on Hub corpora) or ``decode_raw`` (``raw``: every id, special tokens as strings)."""
    check_choice(judge_text, JUDGE_TEXTS, "judge_text", BenchmarkConfigError)
    return data.decode_raw(tokens) if judge_text == "raw" else data.decode(tokens)


def score(tokens: torch.Tensor, data, judge, judge_text: str = "decode", judge_eos: str = "all") -> dict[str, float]:
    """Every quality figure of samples (N, L), in float; ``judge_text`` / ``judge_eos``: the GenPPL conventions
    (:func:`judge_texts`, :mod:`flowzoo.judges`)."""
    metrics = quality_metrics(data, judge, judge_eos)
    out: dict[str, float] = {}
    metrics["entropy"].update(tokens)
    out["entropy"] = float(metrics["entropy"].compute())
    if "markov" in metrics:
        metrics["markov"].update(tokens)
        out.update({k: float(v) for k, v in metrics["markov"].compute().items()})
    texts = judge_texts(tokens, data, judge_text) if data is not None else None
    if "gen_ppl" in metrics and texts is not None:  # a model with neither data nor tokenizer has no text to judge
        metrics["gen_ppl"].update(texts)
        out["gen_ppl"] = float(metrics["gen_ppl"].compute())
    if data is not None:
        for k, v in data.sample_metrics(tokens).items():  # the data's own figures and its metric's; None: not applicable
            out.setdefault(k, None if v is None else float(v))
    out["distinct"] = len({tuple(r) for r in tokens.tolist()}) / tokens.shape[0]
    return out


def prompt_set(config: dict[str, Any], data, model, length: int) -> torch.Tensor:
    """The benchmark's prompts (N, K) of K = ``prompt_len`` ids: the first K tokens of the first N held-out rows
    (``prompts_from: validation``), or of the lines of a text file (each encoded with the data's encoder; lines
    shorter than K tokens are refused, naming the line)."""
    from flowzoo.sampling import encode_text

    K, N, source = int(config["prompt_len"]), int(config["num_samples"]), config["prompts_from"]
    if not 1 <= K < length:
        raise BenchmarkConfigError(f"prompt_len must lie in [1, {length}) for sequences of {length}, got {K}")
    if source == "validation":
        if data is None:
            raise BenchmarkConfigError("prompts_from: validation needs the model's training data")
        split = data.splits["validation"]
        if len(split) < N:
            raise BenchmarkConfigError(f"the validation split has {len(split)} rows, fewer than num_samples={N} prompts")
        return torch.stack([split[i]["input_ids"][:K] for i in range(N)]).long()
    path = Path(source)
    if not path.is_file():
        raise BenchmarkConfigError(f"prompts_from must be 'validation' or a file of prompts (one per line); {source} is neither")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise BenchmarkConfigError(f"{source} holds no prompt")
    ids = []
    for n, line in enumerate(lines, 1):
        encoded = encode_text(line, data, model)
        if len(encoded) < K:
            raise BenchmarkConfigError(f"{source}:{n} has {len(encoded)} tokens, fewer than prompt_len={K}")
        ids.append(encoded[:K])
    return torch.tensor([ids[i % len(ids)] for i in range(N)], dtype=torch.long)


def completion_scores(tokens: torch.Tensor, known: torch.Tensor, data, judge=None, judge_text: str = "decode",
                      judge_eos: str = "all") -> dict[str, float]:
    """Figures of completions (N, L) of prefix prompts (``known`` (N, L), one prompt length): the data's
    conditional ones (``evaluate_completions``: exact on markov) or, on text, its sample figures (word
    validity) of the generated part; with a judge ``gen_ppl`` of prompt + completion scored on the completion
    only (CompletionPerplexity); the unigram entropy of the generated part; ``prompt_repeat``, the share of
    completions whose generated part repeats the prompt's ids verbatim."""
    out: dict[str, float] = {}
    generated = torch.stack([row[~mask] for row, mask in zip(tokens, known)])  # (N, L - K): prefixes of one length
    if data is not None and hasattr(data, "evaluate_completions"):
        out.update({k: float(v) for k, v in data.evaluate_completions(tokens, known).items()})
    elif data is not None:
        out.update({k: float(v) for k, v in data.evaluate_samples(generated).items()})
    if judge is not None and data is not None:
        K = int(known[0].sum())
        ppl = CompletionPerplexity(judge, eos=judge_eos)
        ppl.update(judge_texts(tokens[:, :K], data, judge_text), judge_texts(tokens, data, judge_text))
        out["gen_ppl"] = float(ppl.compute())
    entropy = UnigramEntropy()
    entropy.update(generated)
    out["entropy"] = float(entropy.compute())
    repeats = 0
    for row, mask in zip(tokens.tolist(), known.tolist()):
        prompt = [t for t, k in zip(row, mask) if k]
        rest = [t for t, k in zip(row, mask) if not k]
        repeats += any(rest[i:i + len(prompt)] == prompt for i in range(len(rest) - len(prompt) + 1))
    out["prompt_repeat"] = repeats / tokens.shape[0]
    return out


def run_conditional_row(model, sampler: dict | None, data, prompts: torch.Tensor, config: dict[str, Any], length: int, judge=None) -> dict[str, Any]:
    """Completions of ``prompts`` (N, K) to ``length`` tokens with one (model, sampler) pair, and their figures."""
    from flowzoo.prompt import Prompt

    batch_size, seed = int(config["batch_size"]), int(config["seed"])
    chosen = registry.build("sampler", sampler) if sampler is not None else model.sampler
    tokens, nfe = [], None
    for b, start in enumerate(range(0, prompts.shape[0], batch_size)):
        chunk = prompts[start:start + batch_size]
        out = model.generate(chunk.shape[0], length, sampler=chosen, seed=batch_seed(seed, b), prompt=Prompt.prefix(chunk, length))
        tokens.append(out.tokens.cpu())
        nfe = out.nfe
    samples = torch.cat(tokens)
    known = torch.zeros_like(samples, dtype=torch.bool)
    known[:, : prompts.shape[1]] = True
    return {
        "sampler_name": chosen.registry_name,
        "steps": getattr(chosen, "steps", None),
        "nfe": nfe,
        "prompt_len": prompts.shape[1],
        "metrics": completion_scores(samples, known, data, judge, config["judge_text"], config["judge_eos"]),
        "example": data.decode(samples[:1])[0] if data is not None else None,
    }


@torch.no_grad()
def validation_loss(model, data, batches: int) -> dict[str, float] | None:
    """The objective on the first ``batches`` validation batches, seeded by batch index as in ``validation_step``."""
    if data is None or batches <= 0:
        return None
    metric = ValidationLoss()
    model.eval()
    for batch_idx, batch in enumerate(data.val_dataloader()):
        if batch_idx >= batches:
            break
        batch = batch.to(model.device)
        with torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device]):
            torch.manual_seed(batch_idx)
            if hasattr(model, "prepare_objective"):
                model.prepare_objective()  # a distilled student's teacher, as in validation_step
            out = model.objective(model, batch)
        metric.update(out["loss"], weight=batch.numel())
    result = {k: float(v) for k, v in metric.compute().items()}
    if model.objective.registry_name not in LIKELIHOOD_OBJECTIVES and not getattr(model.objective, "likelihood_bound", False):
        result.pop("ppl_bound")  # exp of a flow-matching cross-entropy bounds nothing
    return result


def run_row(model, sampler: dict | None, data, judge, config: dict[str, Any], length: int, device: torch.device,
            keep: list | None = None) -> dict[str, Any]:
    """Samples, quality, NFE, timings and peak memory of one (model, sampler) pair; with ``keep``, the judge's texts
    of its samples are appended to it (None without text)."""
    batch_size, num_samples, seed = int(config["batch_size"]), int(config["num_samples"]), int(config["seed"])
    chosen = registry.build("sampler", sampler) if sampler is not None else model.sampler

    def generate(n: int, s: int):
        return model.generate(n, length, sampler=chosen, seed=s)

    torch.manual_seed(seed)  # for samplers that also draw from the global generator
    memory, method = None, ""
    steps, limit = getattr(chosen, "steps", None), int(config["cpu_memory_max_steps"])
    measured = device.type == "cuda" or steps is None or steps <= limit
    for w in range(max(int(config["warmup"]), 1)):
        if w == 0 and measured:  # the first warm-up batch is the (untimed) memory measurement
            _, memory, method = peak_memory(lambda: generate(batch_size, seed + 10_000), device)
        else:
            generate(batch_size, seed + 10_000 + w)
    if not measured:
        method = f"not measured on the CPU beyond cpu_memory_max_steps={limit} steps (the profiler's own event log would dominate)"
    torch.manual_seed(seed)
    tokens, seconds, nfe = [], [], None
    for b, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        out, elapsed = timed(lambda: generate(n, batch_seed(seed, b)), device)
        tokens.append(out.tokens.cpu())
        nfe = out.nfe
        if n == batch_size:  # a short last batch is not a batch-time measurement
            seconds.append(elapsed)
    for r in range(max(int(config["repeats"]) - len(seconds), 0)):
        _, elapsed = timed(lambda: generate(batch_size, seed + 20_000 + r), device)
        seconds.append(elapsed)
    samples = torch.cat(tokens)
    median = statistics.median(seconds)
    if keep is not None:
        keep.append(judge_texts(samples, data, config["judge_text"]) if data is not None else None)
    return {
        "sampler": registry.spec(chosen),
        "sampler_name": chosen.registry_name,
        "sampler_label": sampler_label(registry.spec(chosen)),
        "steps": getattr(chosen, "steps", None),
        "nfe": nfe,
        "metrics": score(samples, data, judge, config["judge_text"], config["judge_eos"]),
        "seconds_per_batch": median,
        "seconds_timed": seconds,
        "tokens_per_second": batch_size * length / median,
        "peak_memory_mib": None if memory is None else memory / 2**20,
        "memory_method": method,
        "example": data.decode(samples[:1])[0] if data is not None else None,
    }


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "flowzoo": flowzoo.__version__,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def sampler_label(spec: dict[str, Any]) -> str:
    """The sampler's name and every option that differs from its class default, ``steps`` aside (its own column):
    ``euler``, ``euler decode=sample temperature=0.5``; rows that differ only in sampler options read apart."""
    try:
        defaults = {k: p.default for k, p in inspect.signature(registry.get("sampler", spec["name"])).parameters.items()}
    except FlowzooError:
        defaults = {}
    changed = [f"{k}={v}" for k, v in sorted(spec.get("init_args", {}).items()) if k != "steps" and (k not in defaults or defaults[k] != v)]
    return " ".join([spec["name"], *changed])


def run(config: dict[str, Any], output: str | Path | None = None) -> dict[str, Any]:
    """Run every row of ``config`` (see :func:`load_config`); returns the results dict (also written by :func:`write`).

    With ``output``, ``results.json`` and ``results.md`` are rewritten after every row (``"complete": false`` until
    the last), so a failure part-way loses no finished row.
    """
    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.devices import resolve_device
    from flowzoo.judges import load_judge, weights_digest
    from flowzoo.sampling import training_data, training_length

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = resolve_device(config["device"], "--device")
    judge = load_judge(config["judge"], device=device, batch_size=int(config["judge_batch_size"])) if config["judge"] else None
    plan = [(entry, spec) for entry in config["models"] for spec in sampler_grid(entry.get("samplers"))]
    models, rows, length, reference_data = {}, [], config["length"], None
    conditional: list[dict[str, Any]] = []
    results = {"name": config["name"], "config": config, "environment": environment(device), "judge": getattr(judge, "name", None),
               "judge_digest": weights_digest(config["judge"]) if config["judge"] else None,
               "length": length, "models": models, "rows": rows, "conditional_rows": conditional, "complete": False}
    loaded: dict[str, Any] = {}
    kept: list | None = [] if config["save_samples"] else None  # each row's judge texts, in the rows' order
    for entry, spec in progress(plan, desc="benchmark", min_total=1):
        name = model_name(entry)
        if name not in loaded:
            loaded.clear()  # one model in memory at a time
            model = load_checkpoint(entry["checkpoint"]).to(device).eval()
            data, unavailable = training_data(model)
            if length is None:
                length = training_length(model, data) or (getattr(model, "hub_metadata", {}).get("imported") or {}).get("seq_len")
                if length is None:
                    raise BenchmarkConfigError(f"{entry['checkpoint']} does not record its data; set 'length' in the config (--length)")
            validation = None
            if data is not None:
                try:  # files moved or deleted, a machine that only pulled the model: measure what needs no corpus
                    if data.vocab_size != model.vocab_size:
                        raise DataError(f"its tokenizer now has {data.vocab_size} ids, the model {model.vocab_size}: the files changed")
                    validation = validation_loss(model, data, int(config["val_batches"]))
                except (FlowzooError, OSError) as err:
                    unavailable = err
            models[name] = {
                "checkpoint": str(entry["checkpoint"]),
                "config": model.config(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "validation": validation,
            }
            if unavailable is not None:
                models[name]["note"] = (f"the training data is not available here ({unavailable}): its rows carry only the figures "
                                        "that need no corpus (decoded with the checkpoint's tokenizer), validation loss n/a")
                print(f"flowzoo: note: {name}: {models[name]['note']}", file=sys.stderr)
                loaded[name] = (model, TokenizerText.of(model, data))
            else:
                reference_data = reference_data or data
                loaded[name] = (model, data if data is not None else TokenizerText.of(model))
        model, data = loaded[name]
        row = run_row(model, spec, data, judge, config, int(length), device, keep=kept)
        rows.append({"model": name, **row})
        if config["prompts_from"]:
            prompts = prompt_set(config, data, model, int(length))
            conditional.append({"model": name, **run_conditional_row(model, spec, data, prompts, config, int(length), judge)})
        if output is not None:
            results["length"] = length
            write(results, output, figure=False)
            if kept is not None:
                write_samples(rows, kept, output, config["judge_text"])
    if config["reference"] and reference_data is not None:
        real = torch.stack([reference_data.splits["validation"][i]["input_ids"] for i in range(min(int(config["num_samples"]), len(reference_data.splits["validation"])))])
        rows.append({"model": "data (validation)", "sampler": None, "sampler_name": "data", "sampler_label": "data", "steps": None, "nfe": 0,
                     "metrics": score(real[:, : int(length)], reference_data, judge, config["judge_text"], config["judge_eos"]), "seconds_per_batch": None,
                     "tokens_per_second": None, "peak_memory_mib": None, "memory_method": None, "example": reference_data.decode(real[:1])[0]})
        if kept is not None:
            kept.append(judge_texts(real[:, : int(length)], reference_data, config["judge_text"]))
            if output is not None:  # the model rows are written as they finish; this adds the data row's
                write_samples(rows, kept, output, config["judge_text"])
    results["length"] = length
    results["headline"] = headline(results, config)
    results["complete"] = True
    return results


# --- the headline comparison ---------------------------------------------------------------------


def primary_metric(rows: list[dict[str, Any]], requested: str | None = None) -> str:
    if requested:
        return requested
    available = {k for r in rows for k, v in r["metrics"].items() if v is not None}
    for name in ("gen_ppl", "nll", "word_validity", "entropy"):
        if name in available:
            return name
    return "entropy"


def headline(results: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """The reference row (1-step flow map) against the baseline (MDLM at 8 steps), and the speed-up at equal quality:
    the fastest baseline-sampler row of the baseline's model at least as good as the reference, over the reference's
    time per batch. ``baseline`` may name its ``model`` (needed when several models share a sampler, e.g. MDLM and
    MDLM + SDTT) and may be a list (e.g. every distilled discrete baseline): the first comparison is returned, all of
    them under ``"all"``."""
    spec = config.get("headline") or {}
    rows = [r for r in results["rows"] if r["seconds_per_batch"] is not None]
    metric = primary_metric(rows, spec.get("metric"))
    baselines = spec.get("baseline") or {}
    comparisons = [c for c in (_compare(rows, metric, spec.get("reference", {}), b) for b in (baselines if isinstance(baselines, list) else [baselines])) if c]
    if not comparisons:
        return None
    return {**comparisons[0], "all": comparisons} if len(comparisons) > 1 else comparisons[0]


def _compare(rows: list[dict[str, Any]], metric: str, reference: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any] | None:
    higher = METRICS.get(metric, False)

    def find(want: dict[str, Any]) -> dict[str, Any] | None:
        for r in rows:
            if (r["sampler_name"] == want.get("sampler") and (want.get("steps") is None or r["steps"] == want["steps"])
                    and want.get("model") in (None, r["model"])):
                return r
        return None

    ref, base = find(reference), find(baseline)
    if ref is None or base is None or ref["metrics"].get(metric) is None or base["metrics"].get(metric) is None:
        return None

    def at_least_as_good(r):
        return r["metrics"][metric] >= ref["metrics"][metric] if higher else r["metrics"][metric] <= ref["metrics"][metric]

    family = [r for r in rows if r["sampler_name"] == base["sampler_name"] and r["model"] == base["model"] and r["metrics"].get(metric) is not None]
    matching = sorted((r for r in family if at_least_as_good(r)), key=lambda r: r["seconds_per_batch"])
    out = {
        "metric": metric,
        "higher_is_better": higher,
        "reference": {"model": ref["model"], "sampler": ref["sampler_name"], "steps": ref["steps"], "value": ref["metrics"][metric], "seconds_per_batch": ref["seconds_per_batch"]},
        "baseline": {"model": base["model"], "sampler": base["sampler_name"], "steps": base["steps"], "value": base["metrics"][metric], "seconds_per_batch": base["seconds_per_batch"]},
        "reference_at_least_as_good": (ref["metrics"][metric] >= base["metrics"][metric]) if higher else (ref["metrics"][metric] <= base["metrics"][metric]),
        "speedup_vs_baseline": base["seconds_per_batch"] / ref["seconds_per_batch"],
        "equal_quality_row": None,
        "speedup_at_equal_quality": None,
    }
    if matching:
        best = matching[0]
        out["equal_quality_row"] = {"steps": best["steps"], "value": best["metrics"][metric], "seconds_per_batch": best["seconds_per_batch"]}
        out["speedup_at_equal_quality"] = best["seconds_per_batch"] / ref["seconds_per_batch"]
    return out


# --- writing ---------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def judge_label(judge: str | None, digest: str | None, missing: str = "none") -> str:
    """A judge as a table names it: its path or name, and the digest of its weights where it has one (two judges
    kept at one path differ there)."""
    if not judge:
        return missing
    return f"{judge} (weights sha256 {digest}…)" if digest else judge


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    present = set().union(*(r["metrics"] for r in rows)) if rows else set()
    columns = [m for m in METRICS if m in present] + sorted(present - set(METRICS) - set(HIDDEN))  # then a data metric's own
    arrows = {m: ("≈ data" if m == "entropy" else "" if m not in METRICS else "↑" if METRICS[m] else "↓") for m in columns}
    lines = [f"# Benchmark: {results['name']}", ""]
    env = results["environment"]
    lines.append(
        f"{len(rows)} rows; {results['config']['num_samples']} samples of {results['length']} tokens per row, batches of "
        f"{results['config']['batch_size']}, seeds {results['config']['seed']}·10^6 + batch index; device {env['device']}"
        f"{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, {env['threads']} threads, torch {env['torch']}, flowzoo {env['flowzoo']}."
        f" Judge: {judge_label(results['judge'], results.get('judge_digest'))}. Time per batch: median of the timed batches"
        f" after {results['config']['warmup']} warm-up."
    )
    if results.get("rescored"):
        was = results["rescored"]
        lines.append(f"Re-scored (`flowzoo benchmark --rescore`): GenPPL of the samples kept in {was['from']}, measured there under "
                     f"{judge_label(was['judge'], was.get('judge_digest'), 'no judge')} (`judge_eos: {was['judge_eos']}`), here under "
                     "this table's judge; every other "
                     "figure as measured there" + (f"; its {was['conditional_rows_dropped']} conditional rows are not re-scored"
                                                     if was.get("conditional_rows_dropped") else "") + ".")
    lines.append("")
    lines.append(conventions(results))
    lines += ["", "| model | sampler | steps | NFE | " + " | ".join(f"{m} {arrows[m]}".strip() for m in columns) + " | ms / batch | tokens / s | peak MiB |"]
    lines.append("|" + "---|" * (4 + len(columns) + 3))
    for r in rows:
        ms = None if r["seconds_per_batch"] is None else 1000 * r["seconds_per_batch"]
        cells = [r["model"], r.get("sampler_label", r["sampler_name"]), _fmt(r["steps"]), _fmt(r["nfe"])]
        cells += ["n/a" if m in r["metrics"] and r["metrics"][m] is None else _fmt(r["metrics"].get(m)) for m in columns]  # None: not applicable
        tps = None if r["tokens_per_second"] is None else f"{r['tokens_per_second']:,.0f}"
        cells += [_fmt(ms, 1), _fmt(tps), _fmt(r["peak_memory_mib"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    conditional = results.get("conditional_rows") or []
    if conditional:
        present = set().union(*(r["metrics"] for r in conditional))
        order = ["boundary_valid", "inner_valid", "completion_nll", "entropy", "prompt_repeat"]
        cols = [m for m in order if m in present] + sorted(present - set(order))
        lines += ["", f"## Conditional rows: prompts of {conditional[0]['prompt_len']} tokens ({results['config']['prompts_from']}), "
                  f"{results['length'] - conditional[0]['prompt_len']} generated", ""]
        lines += ["| model | sampler | steps | NFE | " + " | ".join(cols) + " |", "|" + "---|" * (4 + len(cols))]
        for r in conditional:
            lines.append("| " + " | ".join([r["model"], r["sampler_name"], _fmt(r["steps"]), _fmt(r["nfe"])] + [_fmt(r["metrics"].get(m)) for m in cols]) + " |")
    lines += ["", "## Models", "", "| model | checkpoint | parameters | objective | val loss | perplexity bound |", "|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        val = m["validation"] or {}
        if m.get("note") and m["validation"] is None:
            loss = bound = "n/a"  # no validation data here
        else:
            loss, bound = _fmt(val.get("loss")), _fmt(val.get("ppl_bound"), 2)
        lines.append(f"| {name} | `{m['checkpoint']}` | {m['parameters']:,} | {m['config']['objective']['name']} | {loss} | {bound} |")
    notes = [f"Note: {name}: {m['note']}." for name, m in results["models"].items() if m.get("note")]
    if notes:
        lines += ["", *notes]
    h = results.get("headline")
    if h:
        lines += ["", "## Headline", ""]
        for c in h.get("all", [h]):
            lines += _headline_lines(c) + [""]
        lines.pop()
    lines += ["", "Memory: " + ", ".join(sorted({r['memory_method'] for r in rows if r.get('memory_method')})) + " (peak beyond the weights, one batch).", ""]
    lines += ["## Examples (first sample of each row)", ""]
    for r in rows:
        if r.get("example") is not None:
            lines.append(f"- **{r['model']} / {r.get('sampler_label', r['sampler_name'])} {_fmt(r['steps'])}**: `{r['example'][:160]}`")
    return "\n".join(lines) + "\n"


def conventions(results: dict[str, Any]) -> str:
    """The comparability conventions a table was made with (docs/benchmark.md): the judge's text and EOS handling,
    and where the discrete-diffusion samplers stop."""
    config = results["config"]
    text, eos = config.get("judge_text", "decode"), config.get("judge_eos", "all")
    parts = [f"GenPPL text `judge_text: {text}` ("
             + ("the data module's decode: Hub corpora drop special tokens and put each document on its own line" if text == "decode"
                else "every id, special tokens written as their strings, as MDLM / Duo decode") + ")",
             f"`judge_eos: {eos}` (" + {"all": "every judge token scored, EOS included",
                                        "first": "the judge's EOS ids after the first of each piece not scored, as MDLM / Duo",
                                        "truncate": "each sample cut after its first judge EOS"}[eos] + ")"]
    names = {r.get("sampler_name") for r in results["rows"]}
    if "ancestral" in names:
        parts.append("`ancestral` stops at MDLM time τ = the path's eps (1e-3) unless the row says `end_eps` (MDLM's code: 1e-5)")
    if "uniform_ancestral" in names:
        parts.append("`uniform_ancestral` at τ = `end_eps` (Duo's 1e-5 unless the row says otherwise)")
    return "Conventions: " + "; ".join(parts) + "."


def _headline_lines(h: dict[str, Any]) -> list[str]:
    ref, base = h["reference"], h["baseline"]
    lines = [
        f"On {h['metric']} ({'higher' if h['higher_is_better'] else 'lower'} is better): {ref['model']} {ref['sampler']} at {ref['steps']} step(s) "
        f"= {_fmt(ref['value'])} in {1000 * ref['seconds_per_batch']:.1f} ms/batch; {base['model']} {base['sampler']} at {base['steps']} steps "
        f"= {_fmt(base['value'])} in {1000 * base['seconds_per_batch']:.1f} ms/batch ({h['speedup_vs_baseline']:.1f}x the time)."
    ]
    if h["equal_quality_row"]:
        e = h["equal_quality_row"]
        lines.append(
            f"The fastest {base['sampler']} setting of {base['model']} at least as good needs {e['steps']} steps ({_fmt(e['value'])}, "
            f"{1000 * e['seconds_per_batch']:.1f} ms/batch): {h['speedup_at_equal_quality']:.1f}x the time of {ref['model']} at "
            f"{ref['steps']} step(s), at equal quality."
        )
    else:
        lines.append(f"No {base['sampler']} setting in the grid reaches the reference's {h['metric']} ({base['model']}).")
    return lines


def plot(results: dict[str, Any], path: Path, metrics: list[str] | None = None) -> Path:
    """Quality against NFE (left) and against wall-clock per batch (right), one line per model and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in results["rows"] if r["seconds_per_batch"] is not None]
    present = {k for r in rows for k, v in r["metrics"].items() if v is not None}
    metrics = [m for m in (metrics or [primary_metric(rows), "entropy"]) if m in present]
    metrics = list(dict.fromkeys(metrics)) or ["entropy"]
    reference = next((r for r in results["rows"] if r["sampler_name"] == "data"), None)
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.6 * len(metrics)), squeeze=False)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r.get("sampler_label", r["sampler_name"])), []).append(r)
    for i, metric in enumerate(metrics):
        for j, (xkey, xlabel) in enumerate((("nfe", "network evaluations (NFE)"), ("seconds_per_batch", "seconds per batch"))):
            ax = axes[i][j]
            for (model, sampler), group in groups.items():
                group = sorted(group, key=lambda r: (r["nfe"] or 0))
                xs = [max(r[xkey] or 0, 1e-6) for r in group]
                ys = [float("nan") if r["metrics"].get(metric) is None else r["metrics"][metric] for r in group]
                ax.plot(xs, ys, marker="o", label=f"{model} / {sampler}")
            if reference is not None and reference["metrics"].get(metric) is not None:
                ax.axhline(reference["metrics"][metric], color="gray", linestyle="--", linewidth=1, label="data")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            better = "closer to data" if metric == "entropy" else "higher" if METRICS.get(metric, False) else "lower"
            ax.set_ylabel(f"{metric} ({better} is better)")
            if xkey == "nfe":
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.grid(True, alpha=0.3)
            if metric == "gen_ppl":
                ax.set_yscale("log")
    axes[0][1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{results['name']}: quality against NFE and wall-clock ({results['environment']['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, Any], output: str | Path, figure: bool = True) -> dict[str, Path]:
    """``results.json`` and ``results.md`` (each replaced whole, never left half-written) and, with ``figure``, ``results.png``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "results.png"}
    for key, text in (("json", json.dumps(results, indent=2, default=str) + "\n"), ("markdown", markdown(results))):
        partial = paths[key].with_name(paths[key].name + ".partial")
        partial.write_text(text)
        os.replace(partial, paths[key])
    if figure:
        plot(results, paths["plot"], results["config"].get("plot_metrics"))
    else:
        paths.pop("plot")
    return paths
