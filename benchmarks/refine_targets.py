"""How good are ``refine``'s targets: the teacher's repairs of a student's one-step samples, and of real data.

For each ``refine_from`` u0, the one-step decodes x^ of the student (``--student``) and, as a control, real sequences of
the teacher's data are put back on the path at u0 with their own noise and carried to t = 1 by the teacher's ODE
(:meth:`flowzoo.objectives.refine.RefinedDistill.refined`). The table gives the share of tokens the repair rewrote
and the quality of the repaired sequences (the data module's ``evaluate_samples``: on markov the valid-transition
rate, the exact NLL and the bigram TV). On real data the rewritten share is the floor: tokens the target changes
although nothing was wrong, so where it is large the target follows the noise more than the sample.

    python benchmarks/refine_targets.py --teacher runs/study/markov/flow/pretrained \\
        --student runs/study_b25/markov/flow_map/pretrained --refine-from 0.2 0.4 0.6 0.8 \\
        --output benchmarks/results/refine_targets_markov.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from flowzoo import registry
from flowzoo.objectives.paired_regression import one_step_logits

METRICS = ("valid_transitions", "nll", "bigram_tv")


def score(data, ids: torch.Tensor) -> dict[str, float]:
    found = data.evaluate_samples(ids)
    return {k: found[k] for k in METRICS if k in found}


@torch.no_grad()
def rows_for(teacher, student, data, refine_from: Sequence[float], steps: int, num_samples: int, seed: int) -> list[dict]:
    """One row per (source, u0): the source's own score (u0 None) and its repairs' scores and rewritten share."""
    g = torch.Generator().manual_seed(seed)
    length, V = data.seq_len, teacher.vocab_size
    x0 = teacher.path.sample_prior(num_samples, length, V, generator=g)  # (B, L, V)
    real = data.splits["validation"][:num_samples]["input_ids"]  # (B, L)
    sources = {"student one-step": one_step_logits(student, x0).argmax(-1), "data (validation)": real}
    rows = []
    for name, ids in sources.items():
        x = x0[: len(ids)]
        rows.append({"source": name, "refine_from": None, "rewritten": 0.0, **score(data, ids)})
        for u0 in refine_from:
            objective = registry.build("objective", {"name": "refine", "init_args": {"refine_from": u0, "refine_steps": steps}})
            repaired = objective.refined(teacher, x, ids)
            rows.append({"source": name, "refine_from": u0, "rewritten": float((repaired != ids).float().mean()), **score(data, repaired)})
    return rows


def table(rows: list[dict], command: str, num_samples: int, steps: int) -> str:
    lines = ["```", command, "```", "", f"{num_samples} sequences per row; repairs with {steps} teacher evaluations.", "",
             "| source | refine_from | tokens rewritten | valid transitions | NLL / transition | bigram TV |", "|---|---|---|---|---|---|"]
    for r in rows:
        u0 = "-" if r["refine_from"] is None else f"{r['refine_from']:g}"
        valid = f"{100 * r['valid_transitions']:.2f}%" if "valid_transitions" in r else "-"
        lines.append(f"| {r['source']} | {u0} | {100 * r['rewritten']:.1f}% | {valid} | {r.get('nll', float('nan')):.3f} | {r.get('bigram_tv', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict]:
    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.sampling import data_from_spec

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the flow that repairs (.ckpt, save_pretrained folder or Hub id)")
    parser.add_argument("--student", required=True, help="the flow map whose one-step samples are repaired")
    parser.add_argument("--refine-from", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--refine-steps", type=int, default=8, help="teacher evaluations per repair")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--output", required=True, help="Markdown file to write")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.refine_steps < 1 or any(not 0.0 <= u < 1.0 for u in args.refine_from):
        parser.error("--num-samples and --refine-steps must be positive and --refine-from values in [0, 1)")
    output = Path(args.output)
    if not output.resolve().parent.is_dir():
        parser.error(f"the folder of --output {output} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, student = load_checkpoint(args.teacher).eval(), load_checkpoint(args.student).eval()
    data = data_from_spec(teacher.data_spec)
    if data is None:
        parser.error(f"{args.teacher} does not record its data")
    rows = rows_for(teacher, student, data, args.refine_from, args.refine_steps, args.num_samples, args.seed)
    command = "python benchmarks/refine_targets.py " + shlex.join(argv)
    output.write_text(table(rows, command, args.num_samples, args.refine_steps))
    print(output.read_text())
    return rows


if __name__ == "__main__":
    main()
