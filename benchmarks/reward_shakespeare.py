"""Steering and reward fine-tuning on real text: the Shakespeare study's flow map towards a genre (docs/rewards.md).

The reward is the ``classifier`` reward, r(x) = log p(c | x) of a comedy-vs-tragedy classifier trained by
``flowzoo classifier fit --config configs/classifier_shakespeare.yaml`` (First Folio genres, whole plays held
out). With tilt lambda = 1 the tilted law rho_r ∝ p(c | x) rho_1(x) is, by Bayes' rule, the model's law
conditioned on the class c (as far as the classifier is right). Each row draws ``--num-samples`` sequences
and reports the classifier's mean p(c | x), the share read as c (p > 0.5), GenPPL under the study's AR judge,
the unigram entropy (``flowzoo.benchmark.score``), reward evaluations per sample and wall-clock; the first
``--show`` samples of each row are printed under the table with their p(c | x). Rows:

* the held-out text of the data (what the classifier and the judge make of real lines);
* the base flow map at 1 and 4 steps;
* the 4-step map steered by the reward's gradient through its lookahead X_{t,1} (``guidance``, schedule ``tilt``:
  eta = lambda is the first-order tilted flow), a row per eta of ``--etas``;
* the 4-step map with K particles resampled by exp(lambda r(X_{t,1})) (values only);
* best-of-N sampling-importance-resampling (one of N 1-step draws picked ∝ exp(lambda r));
* reward-fine-tuned maps (``--finetuned NAME=PATH``) at 1 and 4 steps, their training reward evaluations in the budget.

    python benchmarks/reward_shakespeare.py --models runs/study_1500/shakespeare \\
        --classifier runs/classifier_shakespeare/pretrained --target tragedy \\
        --finetuned "fine-tuned=runs/reward_shakespeare/pretrained"   # writes benchmarks/results/reward_shakespeare.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from flowzoo import registry
from flowzoo.benchmark import named_path, score, timed
from flowzoo.best_of_n import best_of_n
from flowzoo.checkpoints import load_checkpoint
from flowzoo.judges import load_judge
from flowzoo.objectives.reward import training_reward_evaluations
from flowzoo.sampling import training_data

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="runs/study_1500/shakespeare", help="folder with flow_map/ and judge/ pretrained (benchmarks/study.py)")
    parser.add_argument("--classifier", default="runs/classifier_shakespeare/pretrained", help="flowzoo classifier fit's model")
    parser.add_argument("--target", default="tragedy", help="the class the reward asks for")
    parser.add_argument("--tilt", type=float, default=1.0, help="lambda of rho_r ∝ exp(lambda r) rho_1 (1: the class-conditional law)")
    parser.add_argument("--etas", default="0.5,1,2,4", help="guidance multiples of lambda for the steered rows")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--finetuned", action="append", default=[], type=named_path, metavar="NAME=PATH", help="reward-fine-tuned flow maps to add")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--show", type=int, default=3, help="samples printed per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/reward_shakespeare.md"))
    args = parser.parse_args(argv)
    args.command = "python benchmarks/reward_shakespeare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.num_samples < 1 or args.show < 0 or args.particles < 1 or args.best_of < 1:
        parser.error("--num-samples, --particles and --best-of must be >= 1 and --show >= 0")
    etas = [float(e) for e in args.etas.split(",") if e.strip()]

    finetuned = [(label, load_checkpoint(path).eval()) for label, path in args.finetuned]  # a bad path fails before sampling
    models = Path(args.models)
    base = load_checkpoint(models / "flow_map" / "pretrained").eval()
    data, unavailable = training_data(base)
    if data is None:
        raise SystemExit(f"reward_shakespeare: the flow map's training data cannot be built here ({unavailable})")
    judge = load_judge(str(models / "judge" / "pretrained"))
    L, n = data.seq_len, args.num_samples
    spec = {"name": "classifier", "init_args": {"checkpoint": args.classifier, "target": args.target}}
    reward = registry.build("reward", spec).bind(base.vocab_size)
    reward.resolve(base)
    lam = args.tilt

    rows: list[dict] = []

    def add(method: str, budget: str, tokens: torch.Tensor, evaluations: float, seconds: float) -> None:
        log_p = reward.score_tokens(tokens).float()  # (n,)
        figures = score(tokens, data, judge)
        row = {"method": method, "budget": budget, "log_p": float(log_p.mean()), "p": float(log_p.exp().mean()),
               "share": float((log_p.exp() > 0.5).float().mean()), "gen_ppl": figures.get("gen_ppl"),
               "entropy": figures["entropy"], "evaluations": evaluations, "seconds": seconds,
               "examples": list(zip(data.decode(tokens[: args.show]), log_p[: args.show].exp().tolist()))}
        rows.append(row)
        print(f"{method:<34} {budget:<26} p({args.target}) {row['p']:.3f} share {row['share']:.2f} "
              f"GenPPL {row['gen_ppl']:.1f} entropy {row['entropy']:.3f} evals {evaluations:g} {seconds:.1f}s", flush=True)

    held_out = torch.stack([data.splits["validation"][i]["input_ids"][:L] for i in range(min(n, len(data.splits["validation"])))])
    add("data (validation)", "-", held_out.long(), 0, 0.0)
    for steps in (1, 4):
        out, secs = timed(lambda: base.generate(n, L, sampler={"name": "flow_map", "init_args": {"steps": steps}}, seed=args.seed), base.device)
        add(f"flow map, {steps} step{'s' if steps > 1 else ''} (base)", "-", out.tokens, 0, secs)
    for mult in etas:
        sampler = {"name": "flow_map", "init_args": {"steps": 4, "reward": spec, "guidance": mult * lam, "guidance_schedule": "tilt"}}
        out, secs = timed(lambda: base.generate(n, L, sampler=sampler, seed=args.seed), base.device)
        add("steered flow map, 4 steps", f"eta={mult:g}λ", out.tokens, out.reward_evaluations / n, secs)
    sampler = {"name": "flow_map", "init_args": {"steps": 4, "reward": spec, "particles": args.particles, "tilt": lam}}
    out, secs = timed(lambda: base.generate(n, L, sampler=sampler, seed=args.seed), base.device)
    add("particles, flow map 4 steps", f"K={args.particles}", out.tokens, out.reward_evaluations / n, secs)
    out, secs = timed(lambda: best_of_n(base, reward, args.best_of, n, L, seed=args.seed, tilt=lam), base.device)
    add("best-of-N SIR, flow map 1 step", f"N={args.best_of}", out.tokens, args.best_of, secs)
    for label, model in finetuned:
        trained = training_reward_evaluations(model)
        for steps in (1, 4):
            out, secs = timed(lambda: model.generate(n, L, sampler={"name": "flow_map", "init_args": {"steps": steps}}, seed=args.seed), model.device)
            add(label, f"{steps} step{'s' if steps > 1 else ''}, {trained} train evals", out.tokens, 0, secs)

    write(args, lam, rows)


def write(args, lam: float, rows: list[dict]) -> None:
    c = args.target
    lines = [
        "# Steering and reward fine-tuning on `shakespeare`, towards a genre",
        "",
        f"`{args.command}` (seed {args.seed}).",
        f"r(x) = log p({c} | x) of the classifier; λ = {lam:g}, so ρ_r ∝ p({c} | x)·ρ_1(x) is the model's law conditioned on "
        f"`{c}` as the classifier reads it. `p({c})`: the classifier's mean p({c} | x); `share`: samples it reads as {c} "
        "(p > 0.5); GenPPL under the study's AR judge (lower is more fluent, as the judge sees it); entropy: unigram "
        "entropy of the samples' characters. Reward evaluations: per returned sample while sampling (steering: lookaheads and "
        "the final score, all particles); fine-tuned rows give their training evaluations in the budget. Seconds: "
        "wall-clock for all samples on a 2-core CPU shared with other jobs: rough.",
        "",
        f"| method | budget | p({c}) | share {c} | mean log p | GenPPL | entropy | reward evals / sample | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ppl = "n/a" if r["gen_ppl"] is None else f"{r['gen_ppl']:.1f}"
        lines.append(f"| {r['method']} | {r['budget']} | {r['p']:.3f} | {100 * r['share']:.0f}% | {r['log_p']:.3f} | {ppl} "
                     f"| {r['entropy']:.3f} | {r['evaluations']:g} | {r['seconds']:.1f} |")
    lines += ["", "## Samples", "", f"The first {args.show} samples of each row (same seed, so the base and steered rows start from "
              "the same noise), with the classifier's p(" + c + " | x):", ""]
    for r in rows:
        lines.append(f"**{r['method']}** ({r['budget']})")
        lines.append("")
        for text, p in r["examples"]:
            lines.append(f"    p={p:.2f}  {text!r}")
        lines.append("")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
