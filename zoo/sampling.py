"""Sampling from a saved model: the work behind ``flowzoo sample``."""

from __future__ import annotations

import inspect
import time
import warnings
from typing import Any

import torch

from flowzoo import registry
from flowzoo.checkpoints import load_checkpoint
from flowzoo.devices import resolve_device
from flowzoo.errors import DataError, FlowzooError, PromptError, SamplingWarning
from flowzoo.prompt import HOLE_MARKER, Prompt


def data_from_spec(spec: dict[str, Any] | None):
    """The data module a model was trained on (for decoding and metrics), or None if unknown."""
    if not spec:
        return None
    return registry.build("data", spec)


SEED_STRIDE = 1_000_000  # draws of one sampling seed: batch indices or row offsets below this


def batch_seed(seed: int, index: int) -> int:
    """The generator seed of draw ``index`` (a batch index or a row offset) under sampling seed ``seed``:
    seed · 10^6 + index. Two sampling seeds share no draw (with ``seed + index``, seed 1's batches 0, 1, 2 were seed
    0's batches 1, 2, 3), and seed 0 keeps its draws (``index`` alone, as before)."""
    if not 0 <= index < SEED_STRIDE:
        raise ValueError(f"a draw index must lie in [0, {SEED_STRIDE}), got {index}")
    return seed * SEED_STRIDE + index


def generate_in_batches(model, num: int, length: int, sampler, seed: int, batch: int,
                        prompt: Prompt | None = None) -> tuple[torch.Tensor, int | None]:
    """``num`` samples (num, length) drawn ``batch`` at a time, the batch starting at row i seeded
    ``batch_seed(seed, i)``, and the NFE of one draw. ``prompt``: known ids and mask of shape (num, length), sliced with
    the batches."""
    tokens, nfe = [], None
    for i in range(0, num, batch):
        n = min(batch, num - i)
        part = None if prompt is None else Prompt(prompt.known[i:i + n], prompt.mask[i:i + n], prompt.hold)
        out = model.generate(n, length, sampler=sampler, seed=batch_seed(seed, i), prompt=part)
        tokens.append(out.tokens.cpu())
        nfe = out.nfe
    return torch.cat(tokens), nfe


def sampler_spec(model, sampler: str | None = None, overrides: dict[str, Any] | None = None, option_prefix: str = "") -> dict[str, Any]:
    """The spec of ``model``'s own sampler (or of the sampler named ``sampler``) with ``overrides`` on its options.

    An override the sampler has no option for is refused (ValueError naming it, with ``option_prefix``, and the
    sampler's options); the model's own options the chosen sampler lacks are dropped.
    """
    own = sampler is None or sampler == model.sampler.registry_name
    spec = registry.spec(model.sampler) if own else {"name": sampler, "init_args": {}}
    spec["init_args"].update(overrides or {})
    accepted = inspect.signature(registry.get("sampler", spec["name"])).parameters
    refused = sorted(set(overrides or {}) - set(accepted))
    if refused:
        raise ValueError(
            f"sampler {spec['name']!r} has no option {', '.join(option_prefix + k for k in refused)}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    for key, value in registry.not_numbers(registry.get("sampler", spec["name"]), overrides or {})[:1]:
        raise ValueError(f"sampler {spec['name']!r}: {option_prefix}{key} must be a number, got {value!r}")
    spec["init_args"] = {k: v for k, v in spec["init_args"].items() if k in accepted}
    refuse_ignored_options(spec, overrides or {}, option_prefix)
    return spec


def refuse_ignored_options(spec: dict[str, Any], overrides: dict[str, Any], option_prefix: str = "") -> None:
    """Refuse an override the resulting sampler would silently ignore: a temperature under argmax decoding
    (argmax of p^(1/T) is argmax of p), ``steps`` beside an explicit ``times`` schedule (its steps are len(times) - 1)."""
    args = spec["init_args"]
    if "temperature" in overrides and args.get("decode") == "argmax":
        hint = f"{option_prefix}decode sample" if option_prefix == "--" else f"{option_prefix}decode=sample"
        raise ValueError(f"{option_prefix}temperature has no effect with argmax decoding (sampler {spec['name']!r} decodes by argmax); add {hint}")
    if "steps" in overrides and args.get("times") is not None:
        raise ValueError(
            f"{option_prefix}steps has no effect when times is set (sampler {spec['name']!r} with times={args['times']} takes "
            f"{len(args['times']) - 1} steps); drop {option_prefix}steps, or set times to null"
        )


STEERING_OPTIONS = ("guidance", "particles")


def bound_reward(reward: str | dict, options: dict[str, Any] | None, model, data):
    """The reward named on the command line, bound to the model's vocabulary: token strings and a decoder from the
    training data where it is available (so ``words=[...]`` and text rewards work), else the vocabulary size only."""
    built = registry.build("reward", {"name": reward, "init_args": dict(options or {})} if isinstance(reward, str) else reward)
    vocabulary = decode = None
    if data is not None:
        try:
            vocabulary = data.decode(torch.arange(model.vocab_size)[:, None])  # one token per row: its string
            decode = data.decode
        except (FlowzooError, OSError):
            pass
    return built.bind(model.vocab_size, vocabulary, decode).resolve(model)  # resolve: a judge's or classifier's network


def encode_text(text: str, data=None, model=None) -> list[int]:
    """Ids of ``text`` with the training data's encoder (``data.encode`` or its tokenizer), else the model's tokenizer."""
    if data is not None and hasattr(data, "encode"):
        return list(data.encode(text))
    tokenizer = getattr(data, "tokenizer", None) if data is not None else None
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise PromptError("cannot encode the prompt: the model ships no tokenizer and its training data is not available here")
    encoded = tokenizer.encode(text)
    return list(getattr(encoded, "ids", encoded))


def text_prompt(text: str | None, infill: str | None, hole_length: int, length: int, data=None, model=None, hold: str = "clean") -> Prompt | None:
    """The :class:`Prompt` of ``--prompt TEXT`` (a prefix) or ``--infill TEXT`` (each HOLE_MARKER "[...]" a hole of
    ``hole_length`` generated tokens); None when neither is given."""
    if text is not None and infill is not None:
        raise PromptError("give either --prompt (a prefix) or --infill (a text with holes), not both")
    if text is not None:
        return Prompt.prefix(encode_text(text, data, model), length, hold)
    if infill is not None:
        if HOLE_MARKER not in infill:
            raise PromptError(f"--infill needs at least one hole marked {HOLE_MARKER!r}, e.g. \"To be, or {HOLE_MARKER} to be\"")
        segments = [encode_text(part, data, model) if part.strip() else [] for part in infill.split(HOLE_MARKER)]
        return Prompt.infill(segments, hole_length, length, hold)
    return None


def show_completion(decode, tokens: torch.Tensor, known: torch.Tensor) -> str:
    """One row (L,) as text with each generated span set apart as {{...}} from the known (prompt) text."""
    spans, start = [], 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or bool(known[i]) != bool(known[start]):
            text = decode(tokens[None, start:i])[0]
            spans.append(text if known[start] else "{{" + text + "}}")
            start = i
    whole = decode(tokens[None])[0]
    plain = "".join(s.replace("{{", "").replace("}}", "") for s in spans)
    return "".join(spans) if plain == whole else " ".join(spans)


def training_data(model) -> tuple[Any, BaseException | None]:
    """The data module ``model`` was trained on (None if unrecorded) and why it could not be built (None if it was)."""
    try:
        return data_from_spec(model.data_spec), None
    except (FlowzooError, TypeError, OSError) as err:  # e.g. a data module this flowzoo does not know
        return None, err


def training_length(model, data=None) -> int | None:
    """The sequence length ``model`` was trained on: its data module's, else the one its data spec records."""
    if data is not None:
        return data.seq_len
    return ((model.data_spec or {}).get("init_args") or {}).get("seq_len")


def decode_and_score(model, data, tokens: torch.Tensor, known: torch.Tensor | None = None, unavailable: BaseException | None = None):
    """``(texts, metrics, unavailable)`` of samples ``tokens`` (B, L) on the host.

    With the training data here: its decoder and ``sample_metrics`` (for completions, ``known`` (B, L) marking the
    prompt's positions: ``evaluate_completions``). Where it is not (files moved or deleted, a machine that only pulled
    the model): the checkpoint's own tokenizer (token ids where it has none) and only the figures that need no corpus,
    the data's ``metric`` of the decoded texts; ``unavailable`` then says why (else it is passed through).
    """
    texts, metrics = None, None
    if data is not None:
        try:
            if data.vocab_size != model.vocab_size:
                raise DataError(f"its tokenizer now has {data.vocab_size} ids, the model {model.vocab_size}: the files changed")
            if known is None:
                texts = data.decode(tokens)
                metrics = data.sample_metrics(tokens)
            else:
                texts = [show_completion(data.decode, row, mask) for row, mask in zip(tokens, known)]
                metrics = data.evaluate_completions(tokens, known) if hasattr(data, "evaluate_completions") else None
        except (FlowzooError, OSError) as err:
            texts, metrics, unavailable = None, None, err
    if texts is None:
        tokenizer = getattr(model, "tokenizer", None)  # the checkpoint's own (tokenizer.json, or a Lightning checkpoint's copy)
        rows = tokens.tolist()
        if tokenizer is None:
            texts = [" ".join(map(str, row)) for row in rows]
        else:
            from flowzoo.data.text import decode_rows

            texts = decode_rows(tokenizer, rows)  # as the data module decodes: EOS written as its token
            if data is not None and data.metric:
                try:  # a metric of decoded text needs no corpus
                    metrics = data.text_metrics(texts) or None
                except (FlowzooError, OSError) as err:
                    unavailable = err
    return texts, metrics, unavailable


def sample_from_checkpoint(
    checkpoint: str,
    sampler: str | None = None,
    overrides: dict[str, Any] | None = None,
    num_samples: int = 8,
    length: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    reward: str | dict | None = None,
    reward_options: dict[str, Any] | None = None,
    prompt: str | None = None,
    infill: str | None = None,
    hole_length: int = 8,
    hold: str = "clean",
) -> dict[str, Any]:
    """Load a model onto ``device``, draw samples with (a variant of) its sampler, decode and score them.

    A ``length`` beyond the training length runs, with a :class:`SamplingWarning` (positions the model never saw).
    ``reward`` (a registered name, with ``reward_options``) scores the samples (``metrics["reward"]``, the mean);
    with a steering option among the overrides (``guidance``, ``particles``) the sampler also steers towards it.
    ``prompt`` (a text prefix) or ``infill`` (a text with "[...]" holes of ``hole_length`` tokens) makes the
    samples completions: their texts show the generated spans as {{...}}, and the metrics are the data's
    conditional figures (``evaluate_completions``).
    """
    device = resolve_device(device, "device")
    model = load_checkpoint(checkpoint).to(device)
    data, unavailable = training_data(model)
    scorer = None if reward is None else bound_reward(reward, reward_options, model, data)
    overrides = dict(overrides or {})
    if any(k in overrides for k in STEERING_OPTIONS):
        if scorer is None:
            raise ValueError(f"--option {'/'.join(k for k in STEERING_OPTIONS if k in overrides)} steers towards a reward: name one with --reward NAME")
        overrides["reward"] = scorer
    chosen = model.sampler
    if sampler is not None or overrides:
        chosen = registry.build("sampler", sampler_spec(model, sampler, overrides, option_prefix="--"))
    trained = training_length(model, data)
    if length is None:
        length = trained
        if length is None:
            raise DataError("the checkpoint does not record its data's sequence length; pass --length")
    else:
        if trained and length > trained:
            warnings.warn(
                f"--length {length} is {length / trained:.3g}x the training length {trained}: the model never saw positions "
                f"beyond {trained}, so expect samples to degrade there",
                SamplingWarning,
                stacklevel=2,
            )
    given = text_prompt(prompt, infill, hole_length, length, data, model, hold)
    start = time.perf_counter()
    out = model.generate(num_samples, length, sampler=chosen, seed=seed, prompt=given)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    tokens = out.tokens.cpu()  # decoding and the data's metrics work on the host
    known = None if given is None else given.mask.cpu().expand_as(tokens)
    texts, metrics, unavailable = decode_and_score(model, data, tokens, known, unavailable)
    metrics = None if metrics is None else rounded(metrics)
    result: dict[str, Any] = {"sampler": registry.spec(chosen), "nfe": out.nfe, "seconds": round(elapsed, 3), "device": str(device), "texts": texts}
    if scorer is not None:
        metrics = {**(metrics or {}), "reward": round(float(scorer(tokens).float().mean()), 4)}
        if out.reward_evaluations:
            result["reward_evaluations"] = out.reward_evaluations
    if metrics is not None:
        result["metrics"] = metrics
    if unavailable is not None:
        what = "only the data's own metric" if metrics else "no sample metrics"
        result["note"] = f"{what}: the training data is not available here ({unavailable})"
    return result


def rounded(figures: dict[str, float | None]) -> dict[str, float | None]:
    """Figures to 4 decimals; None (not applicable) stays None."""
    return {k: None if v is None else round(float(v), 4) for k, v in figures.items()}
