"""How far a change of the noise reaches in a sampler's output: the map from noise to tokens, position by position.

For each checkpoint and step count, the sampler (the model's own: ``flow_map`` for a flow map, ``euler`` for a
flow) is run from prior noise x_0 (B, L, V), and again from x_0 with the noise of one position j redrawn. The
table gives, by distance d = |l - j|, the share of tokens at l that changed,

    I(d) = P( token_l(x_0) != token_l(x_0 with x_0[:, j] redrawn) ),   averaged over j and both sides,

and their sum over l (tokens changed per redraw). A deterministic ODE map on a chain moves whole segments when
one token flips (its neighbours must follow), so I(d) of the teacher's many-step map falls off slowly with d; a
one-step map that cannot carry a change that far falls off sooner, and where its segments meet it is left
choosing between branches. Churn (``gamma`` > 0) draws the same fresh noise for both runs (one seed).

    python benchmarks/noise_influence.py --checkpoint teacher=runs/study/markov/flow/pretrained \\
        --checkpoint student=runs/study_b25/markov/flow_map/pretrained --sampler-option teacher:steps=32 \\
        --output benchmarks/results/noise_influence_markov.md
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from flowzoo import registry
from flowzoo.benchmark import named_path
from flowzoo.cli import parse_options


class FixedPrior:
    """``model`` as a sampler sees it, but its path's prior draw returns the given x_0 (B, L, V)."""

    def __init__(self, model, x0: torch.Tensor) -> None:
        self.model, self.head, self.vocab_size, self.device = model, model.head, model.vocab_size, x0.device
        self.path = _PriorPath(model.path, x0)

    def logits(self, x, t, s=None):
        return self.model.logits(x, t, s)

    def denoise(self, x, t, s=None):
        return self.model.head.denoise(self.model.logits(x, t, s))


class _PriorPath:
    def __init__(self, path, x0: torch.Tensor) -> None:
        self._path, self._x0 = path, x0

    def __getattr__(self, name):
        return getattr(self._path, name)

    def sample_prior(self, batch, length, vocab_size, generator=None, device=None):
        if tuple(self._x0.shape) != (batch, length, vocab_size):
            raise ValueError(f"the fixed prior has shape {tuple(self._x0.shape)}, the sampler asked for {(batch, length, vocab_size)}")
        return self._x0


@torch.no_grad()
def influence(model, sampler, x0: torch.Tensor, fresh: torch.Tensor, positions: Sequence[int], seed: int = 0) -> torch.Tensor:
    """I(d) for d = 0 .. L-1: the share of tokens at distance d from a redrawn position j that changed. (L,)"""
    B, L, _ = x0.shape

    def tokens(x):
        return sampler.sample(FixedPrior(model, x), B, L, generator=torch.Generator(device=x.device).manual_seed(seed)).tokens

    base = tokens(x0)
    changed, count = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    distance = torch.arange(L)
    for j in positions:
        x = x0.clone()
        x[:, j] = fresh[:, j]
        diff = (tokens(x) != base).double().mean(0).cpu()  # (L,): share changed at each position
        d = (distance - j).abs()
        changed.index_add_(0, d, diff)
        count.index_add_(0, d, torch.ones(L, dtype=torch.float64))
    return changed / count.clamp_min(1)


def tokens_per_redraw(profile: torch.Tensor, length: int) -> float:
    """Expected tokens changed by one redraw at a position in the middle: I(0) + 2 sum_{d>=1} I(d), d up to L/2."""
    half = length // 2
    return float(profile[0] + 2 * profile[1:half].sum())


def table(rows: list[dict], distances: int, command: str, num_samples: int, length: int) -> str:
    lines = ["```", command, "```", "",
             f"{num_samples} noises of {length} positions; I(d) = share of tokens at distance d from the redrawn position that changed.", "",
             "| model | sampler | steps | " + " | ".join(f"d={d}" for d in range(distances)) + " | tokens per redraw |",
             "|" + "---|" * (4 + distances)]
    for r in rows:
        cells = [r["model"], r["sampler"], str(r["steps"])] + [f"{v:.3f}" for v in r["profile"][:distances]]
        lines.append("| " + " | ".join(cells) + f" | {r['tokens_per_redraw']:.2f} |")
    return "\n".join(lines) + "\n"


def sampler_for(model, options: dict) -> object:
    """The model's own sampler with ``options`` (``steps`` among them) and the dense (not fused) state: the prior
    is read from the path, which the fused samplers draw inside a kernel instead."""
    from flowzoo.sampling import sampler_spec

    spec = sampler_spec(model, overrides=options)
    if "steps" in options:
        spec["init_args"].pop("times", None)
    if "fused" in inspect.signature(registry.get("sampler", spec["name"])).parameters:
        spec["init_args"]["fused"] = False
    return registry.build("sampler", spec)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    from flowzoo.sampling import data_from_spec
    from flowzoo.checkpoints import load_checkpoint

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="name=path (.ckpt, save_pretrained folder or Hub id); repeat for more")
    parser.add_argument("--steps", type=int, nargs="+", default=[1], help="step counts of every checkpoint's sampler (NAME:steps=K overrides)")
    parser.add_argument("--sampler-option", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="a sampler option (value in YAML) of the checkpoint NAME; NAME:steps=32 replaces the --steps grid")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--length", type=int, help="positions (default: the first model's training length)")
    parser.add_argument("--stride", type=int, default=4, help="redraw the noise at every stride-th position")
    parser.add_argument("--distances", type=int, default=12, help="columns d = 0 .. distances-1 in the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--output", required=True, help="Markdown file to write")
    args = parser.parse_args(argv)
    named: dict[str, dict] = {}
    for item in args.sampler_option:
        target, sep, key_value = item.partition(":")
        try:
            if not sep:
                raise ValueError
            named.setdefault(target, {}).update(parse_options([key_value]))
        except ValueError:
            parser.error(f"--sampler-option expects NAME:KEY=VALUE, got {item!r}")
    if args.num_samples < 1 or args.stride < 1 or args.distances < 1 or any(k < 1 for k in args.steps):
        parser.error("--num-samples, --stride, --distances and --steps must be positive")
    output = Path(args.output)
    if not output.resolve().parent.is_dir():
        parser.error(f"the folder of --output {output} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = []
    for value in args.checkpoint:
        try:
            entries.append(named_path(value))
        except ValueError as error:
            parser.error(f"--checkpoint: {error}")
    unknown = sorted(set(named) - {name for name, _ in entries})
    if unknown:
        parser.error(f"--sampler-option for unknown checkpoint names {unknown}")

    rows, x0, fresh = [], None, None
    for name, path in entries:
        model = load_checkpoint(path).eval()
        if getattr(model.path, "state", None) != "continuous":
            parser.error(f"--checkpoint {name}: its path ({registry.spec(model.path)['name']}) has no continuous prior noise to redraw")
        if x0 is None:
            data = data_from_spec(model.data_spec)
            if args.length is None and data is None:
                parser.error(f"{path} does not record its data; give --length")
            length = args.length or data.seq_len
            g = torch.Generator().manual_seed(args.seed)
            x0 = model.path.sample_prior(args.num_samples, length, model.vocab_size, generator=g)  # (B, L, V)
            fresh = model.path.sample_prior(args.num_samples, length, model.vocab_size, generator=g)
        options = dict(named.get(name, {}))
        grid = [options.pop("steps")] if "steps" in options else args.steps
        for steps in grid:
            try:
                sampler = sampler_for(model, {**options, "steps": int(steps)})
            except (ValueError, TypeError) as err:
                parser.error(f"--checkpoint {name}: {err}")
            profile = influence(model, sampler, x0, fresh, range(0, x0.shape[1], args.stride), seed=args.seed)
            rows.append({"model": name, "sampler": registry.spec(sampler)["name"], "steps": int(steps),
                         "profile": profile.tolist(), "tokens_per_redraw": tokens_per_redraw(profile, x0.shape[1])})
            print(f"{name} steps={steps}: " + " ".join(f"{v:.3f}" for v in profile[: args.distances].tolist()), flush=True)
    command = "python benchmarks/noise_influence.py " + shlex.join(argv)
    output.write_text(table(rows, min(args.distances, x0.shape[1]), command, args.num_samples, x0.shape[1]))
    print(output.read_text())
    return rows


if __name__ == "__main__":
    main()
