"""Can one network pass draw what the k-step map draws? Fit a 1-step map to a frozen k-step sampler, noise for noise.

    python benchmarks/one_step_fit.py --target runs/curves_mirror24000/mirror/flow_map_from_24000/pretrained \\
        --steps 1200 --out runs/one_step_fit/d3.md   # copied to docs/benchmark/curves/mirror24000/one_step_fit/

The k-step flow map (``--k``, default 4) of ``--target``, frozen, draws x^_k(eps) from prior noise eps; a student
(``--student``, default a copy of the target) is trained on fresh noise every step with the regression alone,

    min E_eps CE( x^_k(eps) || delta_{0,1}(eps) ),

the ``paired_regression`` objective's loss (``flowzoo fit --model.objective=paired_regression`` trains the same with
checkpoints and resumption; this script adds the readings below), Adam at ``--lr``, bf16 autocast. The data are
unlimited (every step draws new noise), so what the student does not reach is approximation or optimisation, not
overfitting: whether the noise -> sequence function the k-step sampler computes in k passes fits in one pass of
this network (training FLOPs: (2k N_target + 6 N_student) B L a step, k target passes and the student's forward and
backward). Every ``--eval-every`` steps, on the same ``--num`` held-out
noises: the share of tokens the student's 1-step argmax shares with the target's (agreement), the student's pair
match and entropy (mirror data), and the target's own. Unlike ``dmd``'s ``step_regression_weight``, the target does
not move (a frozen map, by default the one the student starts as, not the student's own k-step sampler), and
nothing else trains.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from flowzoo.checkpoints import load_checkpoint
from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.errors import CheckpointError
from flowzoo.heads import CategoricalHead
from flowzoo.metrics import UnigramEntropy
from flowzoo.objectives.paired_regression import PairedRegression, one_step_logits
from flowzoo.sampling import data_from_spec


def noise(model, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    return model.path.sample_prior(n, length, model.vocab_size, generator=generator)  # (n, L, V)


def evaluate(language, tokens: torch.Tensor) -> dict[str, float]:
    entropy = UnigramEntropy()
    entropy.update(tokens)
    figures = language.evaluate(tokens)
    return {"pair_match": figures["pair_match"], "valid_sequences": figures["valid_sequences"],
            "entropy": float(entropy.compute())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="the flow map whose k-step samples are fitted (frozen)")
    parser.add_argument("--student", default=None, help="the map to train (default: a copy of --target)")
    parser.add_argument("--k", type=int, default=4, help="the target sampler's steps")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--num", type=int, default=256, help="held-out noises the figures are read on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="the table (Markdown); the figures go beside it as .json")
    parser.add_argument("--save", default=None, help="a folder to save the fitted student in (save_pretrained) at every reading, to sample it later")
    parser.add_argument("--keep-readings", action="store_true",
                        help="with --save, also keep each reading's student in <save>_step<K> (to score it at its own FLOPs)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if min(args.k, args.steps, args.batch, args.eval_every, args.num) < 1 or args.lr <= 0:
        parser.error("--k, --steps, --batch, --eval-every, --num and --lr must be positive")
    if args.keep_readings and not args.save:
        parser.error("--keep-readings keeps students beside --save's folder: give --save")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    target = load_checkpoint(args.target).eval()
    student = load_checkpoint(args.student or args.target)
    if student.vocab_size != target.vocab_size or type(student.path) is not type(target.path):
        parser.error(f"--student must share the target's vocabulary and path (V {student.vocab_size} against {target.vocab_size})")
    if not isinstance(student.head, CategoricalHead):
        parser.error(f"the fit is a cross-entropy on the student's logits: it needs the categorical head, not {type(student.head).__name__}")
    data = data_from_spec(target.data_spec)
    language = getattr(data, "language", None)
    if language is None:
        parser.error("the target must be trained on mirror data (flowzoo.data.mirror): its pair match is what is read")
    length = language.length
    # the loss and the targets (the target frozen by set_teacher); it becomes the student's objective, so a saved
    # student's config names how it was trained (paired_regression from --target, started as --student)
    objective = PairedRegression(teacher=args.target, teacher_steps=args.k, init_from_teacher=False, init_from=args.student or args.target)
    try:
        objective.set_teacher(target)
    except CheckpointError as error:
        parser.error(str(error))
    objective.teacher_copied.fill_(True)  # the student already holds --student's weights
    student.objective = objective
    held = torch.Generator().manual_seed(10_000 + args.seed)
    eval_noise = noise(target, args.num, length, held)  # (num, L, V), the same for every reading
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.no_grad(), autocast:
        eval_target = torch.cat([objective.targets(e) for e in eval_noise.split(args.batch)])  # (num, L)
    reference = {"target": evaluate(language, eval_target)}

    def reading(step: int) -> dict:
        student.eval()
        with torch.no_grad(), autocast:
            tokens = torch.cat([one_step_logits(student, e).argmax(-1) for e in eval_noise.split(args.batch)])
        student.train()
        return {"step": step, "agreement": float((tokens == eval_target).float().mean()), **evaluate(language, tokens)}

    readings = [reading(0)]
    print(f"target: {reference['target']}; step 0: {readings[-1]}", file=sys.stderr)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=args.lr)
    train = torch.Generator().manual_seed(args.seed)
    student.train()
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        eps = noise(target, args.batch, length, train)
        with autocast:
            loss = objective.regression(student, eps)["loss"]  # CE(x^_k(eps) || delta_{0,1}(eps)), the target's draw without grad
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            readings.append({**reading(step), "loss": sum(losses[-args.eval_every:]) / len(losses[-args.eval_every:])})
            print(f"step {step} ({time.perf_counter() - start:.0f} s): {readings[-1]}", file=sys.stderr)
            if args.save:  # kept at every reading, so a stopped run leaves its latest student
                save_pretrained(student, args.save)
                if args.keep_readings:
                    save_pretrained(student, f"{args.save}_step{step}")
    lines = ["```", "python benchmarks/one_step_fit.py " + shlex.join(argv), "```", "",
             f"The {args.k}-step map of `{args.target}` (frozen), and a 1-step map fitted to its samples: on {args.num} held-out "
             f"noises, the target's own samples read pair match {reference['target']['pair_match']:.3f}, entropy "
             f"{reference['target']['entropy']:.3f}; the student started as `{args.student or args.target}`; "
             f"batch {args.batch}, lr {args.lr}, fresh noise every step.", "",
             "| step | CE to the target (train, nats/token) | agreement with the target | pair match | valid sequences | entropy |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in readings:
        loss = f"{r['loss']:.3f}" if "loss" in r else "-"
        lines.append(f"| {r['step']} | {loss} | {r['agreement']:.3f} | {r['pair_match']:.3f} | {r['valid_sequences']:.3f} | {r['entropy']:.3f} |")
    if args.save:
        lines += ["", f"The fitted student: `{args.save}` (save_pretrained)"
                  + (f"; each reading's in `{args.save}_step<K>`." if args.keep_readings else ".")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    results = {"argv": argv, "reference": reference, "readings": readings}
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
