"""Sample quality against the number of sampler steps, one table for several checkpoints.

A thin wrapper around ``flowzoo benchmark`` (:func:`flowzoo.benchmark.run`): every checkpoint is sampled
with its own sampler (``ancestral`` for MDLM, ``euler`` for a flow, ``flow_map`` for a flow map; a sampler
without a ``steps`` option, like ``ar``, gives one row) at each of ``--steps``, ``--num-samples`` sequences
in batches seeded ``seed·10^6 + batch index`` (flowzoo.sampling.batch_seed; the same for every row), and scored by the data module's
``evaluate_samples`` (on ``markov``: valid-transition rate, exact NLL per transition, its gap to the
entropy rate, the bigram TV to the chain) plus unigram entropy and the share of distinct samples. A row of real validation sequences
is the reference. Writes a Markdown table to ``--output`` (the command that produced it on top) and the
full benchmark results beside it as JSON (same name, ``.json``).

    python benchmarks/steps_table.py --checkpoint mdlm=runs/mdlm_markov/checkpoints/last.ckpt \\
        --checkpoint flow=runs/markov_flow/checkpoints/last.ckpt --steps 8 16 32 64 128 \\
        --output benchmarks/results/steps_markov.md
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from flowzoo import registry
from flowzoo.benchmark import _fmt, load_config, named_path, run
from flowzoo.cli import parse_options
from flowzoo.errors import FlowzooError

DEFAULT_STEPS = (8, 16, 32, 64, 128)
COLUMNS = {  # metric -> column header; those the data module does not report are left out
    "valid_transitions": "valid transitions ↑",
    "nll": "NLL / transition ↓",
    "nll_gap": "NLL − H ↓",
    "bigram_tv": "bigram TV ↓",
    "word_validity": "word validity ↑",
    "unique_words": "unique words ↑",
    "gen_ppl": "gen. PPL ↓",
    "entropy": "unigram entropy (≈ data)",
    "distinct": "distinct ↑",
}


def parse_checkpoint(value: str) -> tuple[str, str]:
    """``name=path`` or ``path``; without a name: the run folder of ``<run>/checkpoints/x.ckpt``, else the file's stem."""
    if "=" in value and not Path(value).exists():
        name, path = named_path(value)
        if "/" not in name:
            return name, path
    p = Path(value)
    if p.parent.name == "checkpoints":
        return p.parent.parent.name or p.stem, value
    return (p.name if p.is_dir() else p.stem), value


def sampler_entry(checkpoint: str, steps: Sequence[int], sampler: str | None = None,
                  options: dict[str, Any] | None = None, every: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampler grid of one checkpoint: its own sampler (or ``sampler``) with its options, at each step count.

    ``options`` override the sampler's options (an unknown one is an error); ``every`` those of them its
    sampler has (options given for all checkpoints).
    """
    from flowzoo.checkpoints import load_checkpoint

    model = load_checkpoint(checkpoint)
    spec = registry.spec(model.sampler)
    if sampler is not None and sampler != spec["name"]:
        spec = {"name": sampler, "init_args": {}}
    args = dict(spec.get("init_args") or {})
    accepted = inspect.signature(registry.get("sampler", spec["name"])).parameters
    refused = sorted(k for k in options or {} if k not in accepted or k == "steps")  # steps: the --steps grid
    if refused:
        raise ValueError(f"sampler {spec['name']!r} has no option {', '.join(refused)} to set here; its options: {', '.join(k for k in accepted if k != 'steps')}")
    args.update({k: v for k, v in (every or {}).items() if k in accepted and k != "steps"})
    args.update(options or {})
    given_times = "times" in (options or {}) or ("times" in (every or {}) and "times" in accepted)
    args.pop("steps", None)
    if "steps" in accepted and not given_times:
        args.pop("times", None)  # flow_map: the checkpoint's own times would override the step count
        return {"name": spec["name"], "steps": [int(s) for s in steps], "init_args": args}
    return {"name": spec["name"], "init_args": args}  # one row (flow_map with given times: len(times) - 1 steps)


def table(results: dict[str, Any], command: str) -> str:
    """Markdown: the command, then one row per (model, steps) and the data row."""
    rows = results["rows"]
    present = set().union(*(r["metrics"] for r in rows)) if rows else set()
    columns = [m for m in COLUMNS if m in present]
    config = results["config"]
    lines = ["```", command, "```", ""]
    first = next((r["metrics"] for r in rows if "entropy_rate" in r["metrics"]), None)
    rate = f"; entropy rate H = {first['entropy_rate']:.4f} nats/transition" if first else ""
    lines.append(
        f"{config['num_samples']} samples of {results['length']} tokens per row, batches of {config['batch_size']} seeded "
        f"{config['seed']}·10^6 + batch index{rate}; device {results['environment']['device']}, torch {results['environment']['torch']}, "
        f"flowzoo {results['environment']['flowzoo']}."
    )
    lines += ["", "| model | sampler | steps | NFE | " + " | ".join(COLUMNS[m] for m in columns) + " |", "|" + "---|" * (4 + len(columns))]
    for r in rows:
        cells = [r["model"], r["sampler_name"], _fmt(r["steps"]), _fmt(r["nfe"])]
        for m in columns:
            value = r["metrics"].get(m)
            cells.append(f"{100 * value:.2f}%" if m in ("valid_transitions", "word_validity", "unique_words", "distinct") and value is not None else _fmt(value, 4))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | checkpoint | objective | parameters | val loss | perplexity bound |", "|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        val = m["validation"] or {}
        lines.append(
            f"| {name} | `{m['checkpoint']}` | {m['config']['objective']['name']} | {m['parameters']:,} | "
            f"{_fmt(val.get('loss'), 4)} | {_fmt(val.get('ppl_bound'), 3)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="[name=]path (.ckpt, save_pretrained folder or Hub id); repeat for more")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--sampler", help="use this sampler for every checkpoint instead of each model's own")
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the first model's training length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--judge", help="generative perplexity judge (transformers name/folder or flowzoo AR checkpoint)")
    parser.add_argument("--sampler-option", action="append", default=[], metavar="[NAME:]KEY=VALUE",
                        help="a sampler option (value in YAML) for the checkpoint NAME, or for every checkpoint whose sampler "
                        "has it; repeatable, e.g. flow_map_churn:gamma=1.0")
    parser.add_argument("--output", required=True, help="Markdown file to write (the JSON goes beside it)")
    args = parser.parse_args(argv)
    every, named = {}, {}
    for item in args.sampler_option:
        target, key_value = item.split(":", 1) if ":" in item.split("=", 1)[0] else (None, item)
        try:
            (every if target is None else named.setdefault(target, {})).update(parse_options([key_value]))
        except ValueError:
            parser.error(f"--sampler-option expects [NAME:]KEY=VALUE, got {item!r}")
    if any(s < 1 for s in args.steps):
        parser.error(f"--steps must be positive, got {args.steps}")
    output = Path(args.output)
    if not output.resolve().parent.is_dir():
        parser.error(f"the folder of --output {output} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)

    models, seen = [], set()
    for value in args.checkpoint:
        name, path = parse_checkpoint(value)
        base, k = name, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        try:
            entry = sampler_entry(path, args.steps, args.sampler, named.pop(name, None), every)
            models.append({"name": name, "checkpoint": path, "samplers": [entry]})
        except (FlowzooError, ValueError) as err:
            parser.error(f"--checkpoint {value}: {err}")
    if named:
        parser.error(f"--sampler-option for unknown checkpoint names {sorted(named)}; the names: {', '.join(sorted(seen))}")
    config = load_config(
        None,
        name="steps_table",
        models=models,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        length=args.length,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        judge=args.judge,
        warmup=1,
        repeats=1,
    )
    results = run(config)
    command = "python benchmarks/steps_table.py " + shlex.join(argv)
    output.write_text(table(results, command))
    output.with_suffix(".json").write_text(json.dumps({"command": command, **results}, indent=2, default=str) + "\n")
    print(output.read_text())
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return results


if __name__ == "__main__":
    main()
