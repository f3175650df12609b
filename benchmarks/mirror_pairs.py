"""Where `mirror`'s pairs are lost: pair match by coupling distance, in free samples and given the first half.

    python benchmarks/mirror_pairs.py --checkpoint flow=runs/curves_mirror24000/mirror/flow/pretrained \\
        --checkpoint mdlm=runs/curves_mirror24000/mirror/mdlm/pretrained --num 256 --out docs/benchmark/curves/mirror24000/pairs.md

In ``mirror`` the second-half token at position i must equal its partner L-1-i, so the pairs are coupled at the
distances d = 1, 3, ..., L-1 (one pair of each per sequence; MirrorLanguage.pair_match_by_distance). Two readings
of each sampler, on the same network:

* **free**: ``--num`` unconditional samples; the share of pairs that match, over all and in bands of distance
  (the sorted distances cut into ``--bands`` groups). A generator that only gets neighbourhoods right matches the
  short pairs near the middle and not the long ones.
* **copy**: the first half of ``--num`` held-out rows known, the second half generated (flowzoo.prompt; the
  continuous samplers with both holds, ``clean`` and ``path``). The second half is then a function of the known
  half, so the pair match is the share the network copies: whether it has learnt the lookup at all, apart from
  whether its sampler can decide both ends of a pair together.

Chance is 1/V (V = 32 states). Checkpoints: ``--checkpoint [LABEL/]METHOD=PATH`` (repeatable; METHOD one of flow,
flow_map, mdlm, ar), each read with its method's samplers (ROWS); all must be trained on one and the same mirror data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowzoo.benchmark import method_checkpoint
from flowzoo.checkpoints import load_checkpoint
from flowzoo.prompt import Prompt
from flowzoo.sampling import data_from_spec, generate_in_batches

METHODS = ("flow", "flow_map", "mdlm", "ar")
# (method, row label, sampler spec, holds of the copy test: continuous samplers take both, the others '-')
ROWS = [
    ("flow", "flow Euler 128", {"name": "euler", "init_args": {"steps": 128}}, ("clean", "path")),
    ("flow", "flow Euler 128, churn 0.3", {"name": "euler", "init_args": {"steps": 128, "gamma": 0.3}}, ("clean", "path")),
    ("flow_map", "flow map 1", {"name": "flow_map", "init_args": {"steps": 1}}, ("clean", "path")),
    ("flow_map", "flow map 4", {"name": "flow_map", "init_args": {"steps": 4}}, ("clean", "path")),
    ("mdlm", "MDLM 8", {"name": "ancestral", "init_args": {"steps": 8}}, ("-",)),
    ("mdlm", "MDLM 128", {"name": "ancestral", "init_args": {"steps": 128}}, ("-",)),
    ("ar", "AR", {"name": "ar"}, ("-",)),
]


def bands(distances: list[int], count: int) -> list[list[int]]:
    """The ascending ``distances`` cut into ``count`` contiguous groups of (nearly) equal size; none empty."""
    return [list(map(int, g)) for g in np.array_split(np.asarray(sorted(distances)), min(count, len(distances)))]


def banded(by_distance: dict[int, float], groups: list[list[int]]) -> list[float]:
    """The mean pair match of each group of distances (each distance is one pair per sequence, so equal weights)."""
    return [float(np.mean([by_distance[d] for d in g])) for g in groups]


def measure(model, language, spec, holds, rows: torch.Tensor, args, groups) -> dict:
    """Free pair match (overall, by band) of ``args.num`` samples; the copy test's pair match under each hold."""
    start = time.perf_counter()
    L, h = language.length, language.half
    free, nfe = generate_in_batches(model, args.num, L, spec, args.seed, args.batch)
    by_distance = language.pair_match_by_distance(free)
    figures = {"nfe": nfe, "free": language.evaluate(free)["pair_match"], "free_by_distance": by_distance,
               "free_bands": banded(by_distance, groups), "copy": {}}
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask[:, :h] = True
    for hold in holds:
        prompt = Prompt(rows, mask, "clean" if hold == "-" else hold)
        done, _ = generate_in_batches(model, rows.shape[0], L, spec, args.seed, args.batch, prompt)
        if not torch.equal(done[:, :h], rows[:, :h]):
            raise RuntimeError(f"{spec['name']} changed a known position of the prompt")
        figures["copy"][hold] = language.evaluate(done)["pair_match"]
    figures["seconds"] = time.perf_counter() - start
    return figures


def table(results: list[tuple[str, dict]], groups: list[list[int]]) -> list[str]:
    band_names = [f"d {g[0]}" if len(g) == 1 else f"d {g[0]}-{g[-1]}" for g in groups]
    head = "| model, sampler | NFE | free: pair match | " + " | ".join(band_names) + " | copy, hold clean | copy, hold path / exact |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(groups) + "---:|---:|"]
    for name, f in results:
        clean = f["copy"].get("clean")
        other = f["copy"].get("path", f["copy"].get("-"))
        cells = [name, str(f["nfe"]), f"{f['free']:.3f}", *(f"{v:.3f}" for v in f["free_bands"]),
                 "-" if clean is None else f"{clean:.3f}", "-" if other is None else f"{other:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_checkpoint(value: str) -> tuple[str, str, str]:
    """``[LABEL/]METHOD=PATH`` -> (label, method, path)."""
    try:
        return method_checkpoint(value, METHODS)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--checkpoint {error}") from None


def main(argv: list[str] | None = None) -> list[tuple[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", type=parse_checkpoint, required=True, metavar="[LABEL/]METHOD=PATH",
                        help=f"a checkpoint of METHOD ({', '.join(METHODS)}), optionally labelled (repeatable)")
    parser.add_argument("--out", required=True, help="the table (Markdown); the figures go beside it as .json")
    parser.add_argument("--num", type=int, default=256, help="free samples, and held-out rows of the copy test")
    parser.add_argument("--bands", type=int, default=4, help="groups of coupling distance in the table")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.num < 1 or args.bands < 1 or args.batch < 1:
        parser.error("--num, --bands and --batch must be positive")
    torch.set_num_threads(args.threads)
    models = [(label, method, path, load_checkpoint(path)) for label, method, path in args.checkpoint]
    specs = {json.dumps(m.data_spec, sort_keys=True) for *_, m in models}
    data = data_from_spec(models[0][3].data_spec) if len(specs) == 1 else None
    if getattr(data, "language", None) is None:
        parser.error("the checkpoints must be trained on one and the same mirror data (flowzoo.data.mirror); "
                     f"got {len(specs)} data spec(s): {sorted(specs)[0][:200]}")
    language = data.language
    rows = data.held_out(args.num)
    groups = bands(language.coupling_distances(), args.bands)
    results = []
    for method, row_label, spec, holds in ROWS:
        for label, m, path, model in models:
            if m != method:
                continue
            name = f"{label}: {row_label}" if label else row_label
            figures = measure(model, language, spec, holds, rows, args, groups)
            figures["checkpoint"] = path
            results.append((name, figures))
            print(f"{name}: free {figures['free']:.3f}, copy {figures['copy']} ({figures['seconds']:.0f} s)", file=sys.stderr)
    reference = language.evaluate(rows)["pair_match"]
    lines = ["```", "python benchmarks/mirror_pairs.py " + shlex.join(argv), "```", "",
             f"Data: {data!r}. {args.num} free samples per row (seed {args.seed}), and the second half of the same number of "
             f"held-out rows generated from their first half (the copy test; the rows themselves: pair match {reference:.3f}). "
             f"Chance: {1 / language.num_states:.3f}. Checkpoints:", ""]
    lines += [f"- {label + ': ' if label else ''}{method}: `{path}`" for label, method, path, _ in models]
    lines += ["", *table(results, groups), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"argv": argv, "bands": groups, "rows": [{"name": n, **f} for n, f in results]}, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
