"""Flow map vs Euler flow on the Markov language: valid-transition rate and sample NLL against NFE.

Stage 1 trains a teacher flow, stage 2 distils a flow-map student from it (both with ``flowzoo fit``
and the configs below, skipped when the checkpoints exist); then the student is sampled with the
``flow_map`` sampler (1, 2, 4, 8 steps) and, on its own diagonal delta_{t,t} = D_t, with ``euler``
(8 ... 128 steps); the teacher's Euler is shown for reference. Writes benchmarks/results/flowmap_markov.md.

    python benchmarks/flowmap_markov.py            # train what is missing, then evaluate
    python benchmarks/flowmap_markov.py --student runs/flowmap_markov/distill/checkpoints/last.ckpt
    python benchmarks/flowmap_markov.py --teacher runs/study/markov/flow/pretrained \
        --student runs/study/markov/flow_map/pretrained --num-samples 1024   # the models of benchmarks/study.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = "configs/flowmap_markov_teacher.yaml"
DISTILL_CONFIG = "configs/flowmap_markov_distill.yaml"
TEACHER = "runs/flowmap_markov/teacher/checkpoints/teacher.ckpt"
STUDENT = "runs/flowmap_markov/distill/checkpoints/last.ckpt"


def fit(config: str, *extra: str) -> None:
    cmd = [sys.executable, "-m", "flowzoo", "fit", "--config", config, *extra]
    print("+", " ".join(cmd), flush=True)
    # PYTHONSAFEPATH: `python -m` from the repository root would put its folders (kernels/, paths/, ...) on sys.path
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONSAFEPATH": "1"})


def evaluate(model, data, sampler: dict, num_samples: int, seed: int) -> dict:
    start = time.perf_counter()
    out = model.generate(num_samples, data.seq_len, sampler=sampler, seed=seed)
    seconds = time.perf_counter() - start
    metrics = data.evaluate_samples(out.tokens)
    distinct = len({tuple(r) for r in out.tokens.tolist()}) / num_samples
    return {"nfe": out.nfe, "seconds": seconds, "distinct": distinct, **metrics}


def row(name: str, r: dict) -> str:
    return (
        f"| {name} | {r['nfe']} | {100 * r['valid_transitions']:.1f} | {r['nll']:.3f} | {r['nll_gap']:+.3f} "
        f"| {100 * r['distinct']:.0f} | {r['seconds']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=TEACHER, help="teacher flow checkpoint (trained with %s if missing)" % TEACHER_CONFIG)
    parser.add_argument("--student", default=STUDENT, help="flow-map student checkpoint (distilled with %s if missing)" % DISTILL_CONFIG)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/flowmap_markov.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.sampling import data_from_spec

    teacher_path, student_path = ROOT / args.teacher, ROOT / args.student
    if not teacher_path.exists():
        fit(TEACHER_CONFIG)
    if not student_path.exists():
        fit(DISTILL_CONFIG, f"--model.objective.init_args.teacher={teacher_path}")

    teacher, student = load_checkpoint(teacher_path), load_checkpoint(student_path)
    data = data_from_spec(student.data_spec)
    chain = data.chain
    rows = []
    for steps in (1, 2, 4, 8):
        rows.append((f"student flow map, {steps} step{'s' if steps > 1 else ''}", evaluate(student, data, {"name": "flow_map", "init_args": {"steps": steps}}, args.num_samples, args.seed)))
    for steps in (8, 16, 32, 64, 128):
        rows.append((f"student Euler (diagonal), {steps} steps", evaluate(student, data, {"name": "euler", "init_args": {"steps": steps}}, args.num_samples, args.seed)))
    for steps in (1, 4):
        rows.append((f"teacher flow used as a map, {steps} step{'s' if steps > 1 else ''}", evaluate(teacher, data, {"name": "flow_map", "init_args": {"steps": steps}}, args.num_samples, args.seed)))
    for steps in (8, 128):
        rows.append((f"teacher Euler, {steps} steps", evaluate(teacher, data, {"name": "euler", "init_args": {"steps": steps}}, args.num_samples, args.seed)))
    for name, r in rows:
        print(row(name, r), flush=True)

    by_name = dict(rows)
    one = by_name["student flow map, 1 step"]["valid_transitions"]
    four = by_name["student flow map, 4 steps"]["valid_transitions"]
    euler = by_name["student Euler (diagonal), 128 steps"]["valid_transitions"]
    student_spec = student.config()
    ckpt = torch.load(student_path, map_location="cpu", weights_only=True) if student_path.is_file() else {}
    lines = [
        "# Flow map vs Euler on the Markov language",
        "",
        f"Written by `python benchmarks/flowmap_markov.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Data: {data!r}; {args.num_samples} samples of {data.seq_len} tokens, seed {args.seed}, CPU, argmax decoding.",
        f"Teacher: `{args.teacher}` (flow matching, {TEACHER_CONFIG}); student: `{args.student}` "
        f"(objective `{student_spec['objective']['name']}`, {ckpt.get('global_step', '?')} steps, {DISTILL_CONFIG}).",
        f"Backbone (both): {student_spec['backbone']['init_args']}.",
        "",
        "valid = share of adjacent token pairs that are allowed transitions of the chain; NLL = exact negative",
        "log-likelihood per transition under the chain (invalid transitions scored log 1e-6); gap = NLL - entropy rate",
        f"H = {chain.entropy_rate():.3f} nats (a gap far below 0 means low-entropy, collapsed samples); distinct = % unique samples.",
        "",
        "| sampler | NFE | valid % | NLL | gap | distinct % | seconds |",
        "|---|---|---|---|---|---|---|",
        *[row(name, r) for name, r in rows],
        "",
        f"- 1-step flow map: {100 * one:.1f}% valid transitions (target >= 90%: {'met' if one >= 0.9 else 'NOT met'}).",
        f"- 4-step flow map vs 128-step Euler of the same model: {100 * four:.1f}% vs {100 * euler:.1f}% "
        f"({100 * (four - euler):+.1f} points; target within 2 points: {'met' if abs(four - euler) <= 0.02 or four > euler else 'NOT met'}).",
        "",
    ]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
