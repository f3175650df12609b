"""Conditional generation on `markov`: prompt completion and infilling, every method, exact figures.

    python benchmarks/conditional_markov.py --runs runs/study/markov --out benchmarks/results/conditional_markov.md
    python benchmarks/conditional_markov.py --runs plain=runs/study/markov --runs cond=runs/study_cond/markov \\
        --only flow flow_map --unconditional 1024 --out benchmarks/results/conditional_markov_share.md   # two sets side by side

Prompts are the first ``--prompt-len`` (8) tokens of held-out (validation) rows of the models' own Markov
language; the remaining 24 of 32 positions are generated. Infilling keeps 12 tokens, generates an 8-token hole
and keeps the next 12. The figures are the chain's exact conditional ones (MarkovChain.conditional_metrics):
completion NLL = -log p(x_U | x_K) per generated token, the valid share of transitions across a known/generated
boundary, and inside the generated part. Continuous samplers run with both holds (``clean``: the known positions
at their one-hot at every step; ``path``: on the path x_t = (1-t) x_0 + t onehot).

Checkpoints: ``--runs [LABEL=]DIR`` (repeatable) takes ``DIR/<method>/pretrained`` for each method (flow, flow_map,
mdlm, ar); ``--checkpoint [LABEL/]METHOD=PATH`` (repeatable) names one. Rows of several labels are put next to
each other, each row named ``LABEL: method``, and the header lists how each model was trained (objective and
``condition_share``). ``--unconditional N`` adds the same sampler's unconditional figures (valid transitions and
NLL per transition of N free samples, MarkovChain.evaluate) to each row, so one table shows what conditioning
gains and what it costs. A method whose checkpoint is missing is left out of the table and named below it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from flowzoo.benchmark import method_checkpoint
from flowzoo.checkpoints import load_checkpoint
from flowzoo.prompt import Prompt
from flowzoo.runs import step_checkpoints
from flowzoo.sampling import data_from_spec, generate_in_batches

METHODS = ("flow", "flow_map", "mdlm", "ar")
# the 4-step map with FMLM churn on docs/flow_maps.md's schedule: re-noised between jumps (gamma = 1), steps late in t
CHURN = {"name": "flow_map", "init_args": {"times": [0.0, 0.6, 0.7, 0.8, 1.0], "gamma": 1.0}}
# (method folder, row label, sampler spec, conditional holds to try)
ROWS = [
    ("flow", "flow Euler 32", {"name": "euler", "init_args": {"steps": 32}}, ("clean", "path")),
    ("flow", "flow Euler 128", {"name": "euler", "init_args": {"steps": 128}}, ("clean",)),
    ("flow_map", "flow map 1", {"name": "flow_map", "init_args": {"steps": 1}}, ("clean", "path")),
    ("flow_map", "flow map 2", {"name": "flow_map", "init_args": {"steps": 2}}, ("clean", "path")),
    ("flow_map", "flow map 4", {"name": "flow_map", "init_args": {"steps": 4}}, ("clean", "path")),
    ("flow_map", "flow map 4 churn", CHURN, ("clean",)),
    ("mdlm", "MDLM 8", {"name": "ancestral", "init_args": {"steps": 8}}, ("-",)),
    ("mdlm", "MDLM 32", {"name": "ancestral", "init_args": {"steps": 32}}, ("-",)),
    ("ar", "AR", {"name": "ar"}, ("-",)),
]
INFILL = [("flow_map", "flow map 4", {"name": "flow_map", "init_args": {"steps": 4}}, ("clean", "path")),
          ("flow_map", "flow map 4 churn", CHURN, ("clean",)),
          ("flow_map", "flow map 1", {"name": "flow_map", "init_args": {"steps": 1}}, ("clean",)),
          ("mdlm", "MDLM 32", {"name": "ancestral", "init_args": {"steps": 32}}, ("-",))]


def measure(model, data, spec, prompt: Prompt, rows: torch.Tensor, seed: int, batch: int) -> dict[str, float]:
    """Complete ``rows`` under ``prompt``'s mask in batches; the exact conditional figures over all rows."""
    start = time.perf_counter()
    x, nfe = generate_in_batches(model, rows.shape[0], rows.shape[1], spec, seed, batch,
                                 Prompt(rows, prompt.mask.expand_as(rows), prompt.hold))
    known = prompt.mask.expand_as(x)
    assert torch.equal(x[known], rows[known]), "a sampler changed a known position"
    figures = data.evaluate_completions(x, known)
    figures.update(nfe=nfe, seconds=time.perf_counter() - start)
    return figures


def measure_free(model, data, spec, num: int, length: int, seed: int, batch: int) -> dict[str, float]:
    """The sampler's unconditional figures: valid transitions and NLL per transition of ``num`` free samples."""
    figures = data.evaluate_samples(generate_in_batches(model, num, length, spec, seed, batch)[0])
    return {"free_valid": float(figures["valid_transitions"]), "free_nll": float(figures["nll"])}


def table(title: str, results: list[tuple[str, str, dict]], free: bool) -> list[str]:
    head = "| method | hold | NFE | boundary valid | inner valid | completion NLL |"
    rule = "|---|---|---:|---:|---:|---:|"
    if free:
        head, rule = head + " unconditional valid | unconditional NLL |", rule + "---:|---:|"
    lines = [f"### {title}", "", head, rule]
    for label, hold, f in results:
        line = f"| {label} | {hold} | {f['nfe']} | {100 * f['boundary_valid']:.1f}% | {100 * f['inner_valid']:.1f}% | {f['completion_nll']:.3f} |"
        if free:
            line += f" {100 * f['free_valid']:.1f}% | {f['free_nll']:.3f} |"
        lines.append(line)
    return lines + [""]


def parse_runs(value: str) -> tuple[str, Path]:
    """``[LABEL=]DIR``: a folder of ``<method>/pretrained`` checkpoints and the label of its rows ('' without one)."""
    label, sep, folder = value.partition("=")
    return (label, Path(folder)) if sep and label and "/" not in label else ("", Path(value))


def parse_checkpoint(value: str) -> tuple[str, str, str]:
    """``[LABEL/]METHOD=PATH`` -> (label, method, path)."""
    try:
        return method_checkpoint(value, METHODS)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--checkpoint {error}") from None


def trained_as(model) -> str:
    """How a model was trained: its objective and condition_share."""
    objective = model.objective
    return f"{objective.registry_name}, condition_share {getattr(objective, 'condition_share', 0.0):g}"


def load_models(args) -> tuple[dict, list[str], list[str]]:
    """{(label, method): model} from ``--runs`` and ``--checkpoint``; the missing (label: method)s; the partial ones."""
    models, missing, partial = {}, [], []
    for label, runs in args.runs:
        for method in METHODS:
            if args.only and method not in args.only:
                continue
            folder = runs / method / "pretrained"
            saved = list(step_checkpoints(runs / method).values())  # ascending steps, the newest run's
            name = f"{label}: {method}" if label else method
            if folder.is_dir():
                models[label, method] = load_checkpoint(str(folder))
            elif saved and args.partial:  # still training: its latest checkpoint, named in the table
                models[label, method] = load_checkpoint(str(saved[-1]))
                partial.append(f"{name}: {saved[-1].name}")
            else:
                missing.append(f"{name} ({runs})")
    for label, method, path in args.checkpoint:
        models[label, method] = load_checkpoint(path)
    return models, missing, partial


def main(argv: list[str] | None = None) -> list[tuple[str, str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", action="append", type=parse_runs, metavar="[LABEL=]DIR",
                        help="folder with <method>/pretrained checkpoints, optionally labelled (repeatable; default runs/study/markov)")
    parser.add_argument("--checkpoint", action="append", type=parse_checkpoint, default=[], metavar="[LABEL/]METHOD=PATH",
                        help=f"one checkpoint for METHOD ({', '.join(METHODS)}), optionally labelled (repeatable)")
    parser.add_argument("--out", default="benchmarks/results/conditional_markov.md")
    parser.add_argument("--num", type=int, default=128, help="held-out prompts")
    parser.add_argument("--unconditional", type=int, default=0, metavar="N",
                        help="add each row's unconditional figures from N free samples (0: none)")
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--context", type=int, default=12, help="known tokens on each side of the infill hole")
    parser.add_argument("--hole", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--partial", action="store_true", help="use a still-training method's latest checkpoints/*.ckpt")
    parser.add_argument("--only", nargs="*", choices=METHODS, help="measure only these methods (folders)")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = [] if args.checkpoint else [parse_runs("runs/study/markov")]
    torch.set_num_threads(args.threads)
    models, missing, partial = load_models(args)
    if not models:
        parser.error("no checkpoint found: " + "; ".join(missing))
    specs = {repr(m.data_spec) for m in models.values()}
    if len(specs) != 1 or None in [m.data_spec for m in models.values()]:
        parser.error("the checkpoints must be trained on one and the same markov data (their held-out rows are the prompts); "
                     f"got {len(specs)} data specs")
    data = data_from_spec(next(iter(models.values())).data_spec)
    rows = data.held_out(args.num)
    L = rows.shape[1]
    if not 1 <= args.prompt_len < L or 2 * args.context + args.hole > L:
        parser.error(f"--prompt-len must lie in [1, {L}) and 2 --context + --hole must not exceed {L}")
    prefix = Prompt.prefix(rows[:1, : args.prompt_len], L)
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[0, : args.context] = True
    mask[0, args.context + args.hole: 2 * args.context + args.hole] = True
    labels = list(dict.fromkeys(label for label, _ in models))
    free_cache: dict[tuple[str, str, str], dict] = {}
    sections, everything = [], []
    for title, spec_rows, base in ((f"Prompt completion: {args.prompt_len} known, {L - args.prompt_len} generated", ROWS, prefix.mask),
                                   (f"Infilling: {args.context} known, {args.hole}-token hole, {args.context} known"
                                    + (f", {L - 2 * args.context - args.hole} generated after" if L > 2 * args.context + args.hole else ""), INFILL, mask)):
        results = []
        for method, row_label, spec, holds in spec_rows:
            for label in labels:
                model = models.get((label, method))
                if model is None:
                    continue
                name = f"{label}: {row_label}" if label else row_label
                for hold in holds:
                    prompt = Prompt(torch.zeros(1, L, dtype=torch.long), base, "clean" if hold == "-" else hold)
                    figures = measure(model, data, spec, prompt, rows, args.seed, args.batch)
                    if args.unconditional:
                        key = (label, method, repr(spec))
                        if key not in free_cache:
                            free_cache[key] = measure_free(model, data, spec, args.unconditional, L, args.seed, args.batch)
                        figures.update(free_cache[key])
                    print(name, hold, {k: round(float(v), 4) for k, v in figures.items()}, flush=True)
                    results.append((name, hold, figures))
        sections += table(title, results, bool(args.unconditional))
        everything += results
    command = "python benchmarks/conditional_markov.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    trained = [f"- {label + ': ' if label else ''}{method}: {trained_as(m)}" for (label, method), m in models.items()]
    header = [
        "# Conditional generation on markov (exact figures)", "",
        f"`{command}` — {args.num} held-out rows of {L} tokens; exact conditional figures of the chain "
        "(MarkovChain.conditional_metrics)" + (f"; unconditional figures from {args.unconditional} free samples of "
                                               f"{L} tokens with the row's sampler (MarkovChain.evaluate)" if args.unconditional else "") + ".",
        "", "Trained as (objective, share of training rows with a prompt; 0: inference-only conditioning):", "", *trained, "",
    ]
    footer = [f"Not measured (no checkpoint): {', '.join(missing)}.", ""] if missing else []
    if partial:
        footer += [f"Still training when measured (latest checkpoint used): {'; '.join(partial)}.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + sections + footer))
    print(f"wrote {args.out}")
    return everything


if __name__ == "__main__":
    main()
