"""Conditional generation on `markov`: prompt completion and infilling, every method, exact figures.

    python benchmarks/conditional_markov.py --runs runs/study/markov --out benchmarks/results/conditional_markov.md

Prompts are the first ``--prompt-len`` (8) tokens of held-out (validation) rows of the models' own Markov
language; the remaining 24 of 32 positions are generated. Infilling keeps 12 tokens, generates an 8-token hole
and keeps the next 12. The figures are the chain's exact conditional ones (MarkovChain.conditional_metrics):
completion NLL = -log p(x_U | x_K) per generated token, the valid share of transitions across a known/generated
boundary, and inside the generated part. Continuous samplers run with both holds (``clean``: the known positions
at their one-hot at every step; ``path``: on the path x_t = (1-t) x_0 + t onehot). A method whose checkpoint
folder (``RUNS/<method>/pretrained``) is missing is left out of the table and named below it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flowzoo.checkpoints import load_checkpoint
from flowzoo.prompt import Prompt
from flowzoo.sampling import data_from_spec

# (method folder, row label, sampler spec, conditional holds to try)
ROWS = [
    ("flow", "flow Euler 32", {"name": "euler", "init_args": {"steps": 32}}, ("clean", "path")),
    ("flow", "flow Euler 128", {"name": "euler", "init_args": {"steps": 128}}, ("clean",)),
    ("flow_map", "flow map 1", {"name": "flow_map", "init_args": {"steps": 1}}, ("clean", "path")),
    ("flow_map", "flow map 2", {"name": "flow_map", "init_args": {"steps": 2}}, ("clean", "path")),
    ("flow_map", "flow map 4", {"name": "flow_map", "init_args": {"steps": 4}}, ("clean", "path")),
    ("mdlm", "MDLM 8", {"name": "ancestral", "init_args": {"steps": 8}}, ("-",)),
    ("mdlm", "MDLM 32", {"name": "ancestral", "init_args": {"steps": 32}}, ("-",)),
    ("ar", "AR", {"name": "ar"}, ("-",)),
]
INFILL = [("flow_map", "flow map 4", {"name": "flow_map", "init_args": {"steps": 4}}, ("clean", "path")),
          ("flow_map", "flow map 1", {"name": "flow_map", "init_args": {"steps": 1}}, ("clean",)),
          ("mdlm", "MDLM 32", {"name": "ancestral", "init_args": {"steps": 32}}, ("-",))]


def held_out(data, num: int) -> torch.Tensor:
    """The first ``num`` validation rows (num, L) of the data the model was trained on."""
    return torch.stack([data.splits["validation"][i]["input_ids"] for i in range(num)]).long()


def measure(model, data, spec, prompt: Prompt, rows: torch.Tensor, seed: int, batch: int) -> dict[str, float]:
    """Complete ``rows`` under ``prompt``'s mask in batches; the exact conditional figures over all rows."""
    tokens, nfe, start = [], 0, time.perf_counter()
    for i in range(0, rows.shape[0], batch):
        chunk = rows[i:i + batch]
        p = Prompt(chunk, prompt.mask.expand_as(chunk), prompt.hold)
        out = model.generate(chunk.shape[0], chunk.shape[1], sampler=spec, seed=seed + i, prompt=p)
        tokens.append(out.tokens.cpu())
        nfe = out.nfe
    x = torch.cat(tokens)
    known = prompt.mask.expand_as(x)
    assert torch.equal(x[known], rows[known]), "a sampler changed a known position"
    figures = data.evaluate_completions(x, known)
    figures.update(nfe=nfe, seconds=time.perf_counter() - start)
    return figures


def table(title: str, results: list[tuple[str, str, dict]]) -> list[str]:
    lines = [f"### {title}", "", "| method | hold | NFE | boundary valid | inner valid | completion NLL |", "|---|---|---:|---:|---:|---:|"]
    for label, hold, f in results:
        lines.append(f"| {label} | {hold} | {f['nfe']} | {100 * f['boundary_valid']:.1f}% | {100 * f['inner_valid']:.1f}% | {f['completion_nll']:.3f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/study/markov", help="folder with <method>/pretrained checkpoints")
    parser.add_argument("--out", default="benchmarks/results/conditional_markov.md")
    parser.add_argument("--num", type=int, default=128, help="held-out prompts")
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--context", type=int, default=12, help="known tokens on each side of the infill hole")
    parser.add_argument("--hole", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--partial", action="store_true", help="use a still-training method's latest checkpoints/*.ckpt")
    parser.add_argument("--only", nargs="*", help="measure only these methods (folders)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs, models, missing = Path(args.runs), {}, []
    partial = []
    for method in sorted({r[0] for r in ROWS}):
        folder = runs / method / "pretrained"
        saved = sorted((runs / method / "checkpoints").glob("*step=*.ckpt"), key=lambda p: int(p.stem.rpartition("step=")[2]))
        if folder.is_dir():
            models[method] = load_checkpoint(str(folder))
        elif saved and args.partial:  # still training: its latest checkpoint, named in the table
            models[method] = load_checkpoint(str(saved[-1]))
            partial.append(f"{method}: {saved[-1].name}")
        else:
            missing.append(method)
    if not models:
        raise SystemExit(f"no checkpoint under {runs}/<method>/pretrained")
    data = data_from_spec(next(iter(models.values())).data_spec)
    rows = held_out(data, args.num)
    L = rows.shape[1]
    prefix = Prompt.prefix(rows[:1, : args.prompt_len], L)
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[0, : args.context] = True
    mask[0, args.context + args.hole: 2 * args.context + args.hole] = True
    sections = []
    for title, spec_rows, base in ((f"Prompt completion: {args.prompt_len} known, {L - args.prompt_len} generated", ROWS, prefix.mask),
                                   (f"Infilling: {args.context} known, {args.hole}-token hole, {args.context} known"
                                    + (f", {L - 2 * args.context - args.hole} generated after" if L > 2 * args.context + args.hole else ""), INFILL, mask)):
        results = []
        for method, label, spec, holds in spec_rows:
            if method not in models or (args.only and method not in args.only):
                continue
            for hold in holds:
                prompt = Prompt(torch.zeros(1, L, dtype=torch.long), base, "clean" if hold == "-" else hold)
                figures = measure(models[method], data, spec, prompt, rows, args.seed, args.batch)
                print(label, hold, {k: round(float(v), 4) for k, v in figures.items()}, flush=True)
                results.append((label, hold, figures))
        sections += table(title, results)
    header = [
        "# Conditional generation on markov (exact figures)", "",
        f"`python benchmarks/conditional_markov.py --runs {args.runs} --num {args.num}` — {args.num} held-out rows of "
        f"{L} tokens; exact conditional figures of the chain (MarkovChain.conditional_metrics). Inference-only "
        "conditioning (the study checkpoints were trained unconditionally).", "",
    ]
    footer = [f"Not measured (no checkpoint under {args.runs}): {', '.join(missing)}.", ""] if missing else []
    if partial:
        footer += [f"Still training when measured (latest checkpoint used): {'; '.join(partial)}.", ""]
    Path(args.out).write_text("\n".join(header + sections + footer))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
