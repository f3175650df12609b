"""Reward alignment on the Markov language, scored against the exact reward-tilted law (docs/rewards.md).

r(x) = sum_l 1[x_l in W] (``token_count``); lambda is chosen (``TiltedChain.for_mean_reward``) so that the exact
E_{rho_r}[r] is twice the base flow map's measured mean reward. Every method draws ``--num-samples`` sequences and
is scored by ``TiltedChain.evaluate``: mean reward beside the exact one, the share of the way from the base mean
to it, NLL under rho_r minus rho_r's entropy per transition (``kl_proxy``: ~0 for samples of rho_r, negative for a
collapse onto likely sequences, positive off the law), valid transitions, distinct samples, reward evaluations per
sample and wall-clock. Methods, each a curve over its budget:

* best-of-N (sampling-importance-resampling: one of N draws picked ∝ exp(lambda r)) from the flow map (1 step),
  MDLM and AR, N = 1 ... 16;
* the 4-step flow map steered by the reward gradient through its lookahead (``guidance``, schedule ``tilt``:
  eta = lambda is the first-order tilted flow), a curve over eta;
* the 4-step flow map with K particles resampled by exp(lambda (r(X_{t,1}) - r_prev)), K = 2 ... 16;
* a reward-fine-tuned flow map, where ``--finetuned`` names one (its training reward evaluations, steps x samples
  a step, read off its saved config, are in its budget);
* with ``--policy-gradient``: KL-regularised REINFORCE (objective ``policy_gradient``, leave-one-out baseline, tilt
  lambda, KL to the frozen base) of the AR model and of MDLM, fine-tuned here, a row every ``--pg-every`` steps with
  the training reward evaluations so far as its budget: the policy-gradient baseline at equal reward evaluations.

    python benchmarks/reward_markov.py --models runs/study/markov     # writes benchmarks/results/reward_markov.{md,png}
    python benchmarks/reward_markov.py --models runs/study/markov --append --policy-gradient   # adds the REINFORCE rows
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowzoo import registry, runs
from flowzoo.benchmark import named_path, timed
from flowzoo.best_of_n import best_of_n
from flowzoo.checkpoints import load_checkpoint
from flowzoo.module import FlowLM
from flowzoo.objectives.reward import training_reward_evaluations
from flowzoo.rewards import TiltedChain

ROOT = Path(__file__).resolve().parents[1]


def choose_words(chain, mass: float) -> list[int]:
    """W: the least likely words that are not part of a named pair, added until their stationary mass reaches ``mass``."""
    order = [int(i) for i in np.argsort(chain.stationary) if i >= 8]
    W, total = [], 0.0
    for i in order:
        if total >= mass:
            break
        W.append(i)
        total += float(chain.stationary[i])
    return sorted(W)


def score(tilted: TiltedChain, tokens: torch.Tensor, evaluations: float, seconds: float, base: float) -> dict:
    m = tilted.evaluate(tokens)
    x = tokens.tolist()
    m["distinct"] = len({tuple(r) for r in x}) / len(x)
    m["evaluations"], m["seconds"] = evaluations, seconds
    m["way"] = (m["reward"] - base) / (m["exact_reward"] - base)
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="runs/study/markov", help="folder with {flow_map,mdlm,ar}/pretrained (benchmarks/study.py)")
    parser.add_argument("--finetuned", action="append", default=[], type=named_path, metavar="NAME=PATH", help="reward-fine-tuned flow maps to add")
    parser.add_argument("--trajectory", action="append", default=[], type=named_path, metavar="NAME=RUN",
                        help="a reward fine-tune's run folder: a 1-step row for each of its step checkpoints (checkpoints/*step=K.ckpt)")
    parser.add_argument("--skip-baselines", action="store_true", help="no rows of the exact laws, base map, best-of-N and "
                        "steering: only the --finetuned, --trajectory and --policy-gradient rows (a table of its own)")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--mass", type=float, default=0.1, help="stationary mass of W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/reward_markov.md"))
    parser.add_argument("--quick", action="store_true", help="fewer budgets (a smoke run)")
    parser.add_argument("--append", action="store_true", help="keep the rows of the existing --output table and only "
                        "add the --finetuned models and --policy-gradient rows (the same seed, W and lambda)")
    parser.add_argument("--policy-gradient", action="store_true", help="fine-tune AR and MDLM with KL-regularised REINFORCE")
    parser.add_argument("--pg-steps", type=int, default=300, help="REINFORCE steps")
    parser.add_argument("--pg-samples", type=int, default=64, help="samples (= reward evaluations) per REINFORCE step")
    parser.add_argument("--pg-every", type=int, default=50, help="a row every this many steps")
    parser.add_argument("--pg-lr", type=float, default=1e-4)
    parser.add_argument("--mdlm-steps", type=int, default=32, help="ancestral steps of MDLM's samples (best-of-N and REINFORCE)")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/reward_markov.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    torch.manual_seed(args.seed)
    finetuned = [(label, load_checkpoint(path).eval()) for label, path in args.finetuned]  # a bad path fails before sampling
    models = Path(args.models)
    base_map = load_checkpoint(models / "flow_map" / "pretrained")
    data = registry.build("data", base_map.data_spec)
    chain, n, L = data.chain, args.num_samples, data.seq_len
    W = choose_words(chain, args.mass)
    reward = registry.build("reward", {"name": "token_count", "init_args": {"tokens": W}}).bind(base_map.vocab_size)
    g = np.zeros(chain.num_states)
    g[W] = 1.0

    rows: list[tuple[str, str, dict]] = []
    own, seconds = timed(lambda: base_map.generate(n, L, seed=args.seed), base_map.device)
    base_reward = float(reward(own.tokens).mean())
    tilted = TiltedChain.for_mean_reward(chain.stationary, chain.transition, g, L, 2 * base_reward)
    lam = tilted.lam
    exact_base = TiltedChain(chain.stationary, chain.transition, g, 0.0, L)
    print(f"W = {[chain.words[i] for i in W]}; base flow map mean reward {base_reward:.3f} (exact rho_1: "
          f"{exact_base.expected_reward():.3f}); lambda = {lam:.4f}, exact E_rho_r[r] = {tilted.expected_reward():.3f}", flush=True)

    def add(method, budget, tokens, evaluations, secs):
        r = score(tilted, tokens, evaluations, secs, base_reward)
        rows.append((method, budget, r))
        print(f"{method:<28} {budget:<10} reward {r['reward']:.3f} way {r['way']:+.2f} kl {r['kl_proxy']:+.3f} "
              f"valid {r['valid_transitions']:.3f} distinct {r['distinct']:.2f} evals {evaluations:g} {secs:.1f}s", flush=True)

    if args.append:
        rows.extend(read_rows(Path(args.output)))
    elif not args.skip_baselines:
        baselines(args, add, tilted, exact_base, own, seconds, base_map, reward, W, lam, n, L, models)
    for label, model in finetuned:
        trained = training_reward_evaluations(model)
        for steps in (1, 4):
            out, secs = timed(lambda: model.generate(n, L, sampler={"name": "flow_map", "init_args": {"steps": steps}}, seed=args.seed), model.device)
            add(f"{label}", f"{steps} step{'s' if steps > 1 else ''}, {trained} train evals", out.tokens, 1, secs)
    for label, run in args.trajectory:
        for step, path in step_checkpoints(Path(run)):
            model = load_checkpoint(path).eval()
            out, secs = timed(lambda: model.generate(n, L, sampler={"name": "flow_map", "init_args": {"steps": 1}}, seed=args.seed), model.device)
            add(label, f"step {step}, 1 step, {training_reward_evaluations(model)} train evals", out.tokens, 1, secs)
    if args.policy_gradient:
        for name, folder, sampler in [("AR", "ar", None), ("MDLM", "mdlm", mdlm_sampler(args))]:
            path = models / folder / "pretrained"
            if not path.is_dir():
                print(f"(no {path}: policy gradient of {name} skipped)")
                continue
            policy_gradient(args, add, path, {"name": "token_count", "init_args": {"tokens": W}}, lam, n, L, name, sampler)

    write(args, chain, W, base_reward, tilted, rows, exact_base.evaluate(own.tokens)["nll_tilted"])


def policy_gradient(args, add, base_path: Path, reward: dict, lam: float, n: int, L: int, name: str, sampler) -> None:
    """KL-regularised REINFORCE of the model at ``base_path`` (objective ``policy_gradient``, tilt lambda, the base
    frozen), Adam for ``--pg-steps`` steps of ``--pg-samples`` samples; every ``--pg-every`` steps a row of ``n``
    samples of the policy with the training reward evaluations so far as its budget."""
    base = load_checkpoint(base_path)
    config = base.config()
    config["objective"] = {"name": "policy_gradient", "init_args": {
        "teacher": str(base_path), "reward": reward, "tilt": lam, "num_generated": args.pg_samples, "sampler": sampler}}
    model = FlowLM.from_config(config)
    model.data_spec = base.data_spec
    model.prepare_objective()  # loads the frozen base and starts the policy as it
    optimizer = torch.optim.Adam(model.parameters(), lr=args.pg_lr)
    batch = torch.zeros(args.pg_samples, L, dtype=torch.long)  # only its shape matters: the samples are the policy's
    start = time.perf_counter()
    for step in range(1, args.pg_steps + 1):
        model.train()
        out = model.objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if step % args.pg_every == 0 or step == args.pg_steps:
            samples = model.generate(n, L, seed=args.seed).tokens
            add(f"policy gradient, {name}, lr {args.pg_lr:g}", f"{step * args.pg_samples} train evals", samples, 1,
                time.perf_counter() - start)


def step_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the newest run's step checkpoints under ``run`` (:func:`flowzoo.runs.step_checkpoints`), in step
    order; a run without any is refused."""
    found = runs.step_checkpoints(run)
    if not found:
        raise SystemExit(f"reward_markov: no step checkpoints (*step=K.ckpt) in the newest run under {run}")
    return list(found.items())


def mdlm_sampler(args) -> dict:
    """MDLM's sampler in this benchmark: ancestral with ``--mdlm-steps`` steps (its own default, 128, is 4x the cost)."""
    return {"name": "ancestral", "init_args": {"steps": args.mdlm_steps}}


def commands(args) -> list[str]:
    """The header's command lines: with --append those of the table being extended, then this run's."""
    earlier = []
    if args.append and Path(args.output).is_file():
        earlier = [line for line in Path(args.output).read_text().splitlines() if line.startswith("`python benchmarks/reward_markov.py")]
    return [*earlier, f"`{args.command}` (seed {args.seed})."]


def read_rows(path: Path) -> list:
    """The rows of a table this script wrote (for --append)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 10 or cells[0] in ("method", "---"):
            continue
        keys = ["reward", "way", "kl_proxy", "nll_tilted", "valid_transitions", "distinct", "evaluations", "seconds"]
        values = [float(c.rstrip("%")) for c in cells[2:]]
        r = dict(zip(keys, values))
        r["valid_transitions"] /= 100
        r["distinct"] /= 100
        rows.append((cells[0], cells[1], r))
    return rows


def baselines(args, add, tilted, exact_base, own, seconds, base_map, reward, W, lam, n, L, models) -> None:
    """The rows of the exact laws, the base map, best-of-N, steering and particles."""
    exact = torch.tensor(tilted.sample(n, args.seed))
    add("exact rho_r (reference)", "-", exact, 0, 0.0)
    add("exact rho_1 (data)", "-", torch.tensor(exact_base.sample(n, args.seed)), 0, 0.0)
    add("flow map 1 step (base)", "-", own.tokens, 1, seconds)
    plain4, secs = timed(lambda: base_map.generate(n, L, sampler={"name": "flow_map", "init_args": {"steps": 4}}, seed=args.seed), base_map.device)
    add("flow map 4 steps (base)", "-", plain4.tokens, 1, secs)

    budgets = [2, 4, 16] if args.quick else [2, 4, 8, 16]
    spec = {"name": "token_count", "init_args": {"tokens": W}}
    for name, folder, sampler in [("flow map 1 step", "flow_map", None), (f"MDLM {args.mdlm_steps} steps", "mdlm", mdlm_sampler(args)),
                                  ("AR", "ar", None)]:
        path = models / folder / "pretrained"
        if not path.is_dir():
            print(f"(no {path}: best-of-N from {name} skipped)")
            continue
        model = base_map if folder == "flow_map" else load_checkpoint(path)
        for N in budgets:
            out, secs = timed(lambda: best_of_n(model, reward, N, n, L, sampler=sampler, seed=args.seed, tilt=lam, batch_size=1024), model.device)
            add(f"best-of-N SIR, {name}", f"N={N}", out.tokens, N, secs)

    etas = [0.5, 1.0, 2.0] if args.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    for mult in etas:
        sampler = {"name": "flow_map", "init_args": {"steps": 4, "reward": spec, "guidance": mult * lam, "guidance_schedule": "tilt"}}
        out, secs = timed(lambda: base_map.generate(n, L, sampler=sampler, seed=args.seed), base_map.device)
        add("steered flow map, 4 steps", f"eta={mult:g}λ", out.tokens, out.reward_evaluations / n, secs)
    for mult in ([0.25] if args.quick else [0.1, 0.25, 0.5]):
        sampler = {"name": "flow_map", "init_args": {"steps": 4, "reward": spec, "guidance": mult, "normalize": True}}
        out, secs = timed(lambda: base_map.generate(n, L, sampler=sampler, seed=args.seed), base_map.device)
        add("steered 4 steps, normalised", f"eta={mult:g}", out.tokens, out.reward_evaluations / n, secs)
    for K in budgets:
        sampler = {"name": "flow_map", "init_args": {"steps": 4, "reward": spec, "particles": K, "tilt": lam}}
        out, secs = timed(lambda: base_map.generate(n, L, sampler=sampler, seed=args.seed), base_map.device)
        add("particles, flow map 4 steps", f"K={K}", out.tokens, out.reward_evaluations / n, secs)


def write(args, chain, W, base_reward, tilted, rows, base_nll: float) -> None:
    output = Path(args.output)
    H = chain.entropy_rate()
    lines = [
        "# Reward alignment on `markov`, against the exact tilted law",
        "",
        *commands(args),
        f"r(x) = Σ_l 1[x_l ∈ W], W = {[chain.words[i] for i in W]} (ids {W}); base flow map (1 step) mean reward "
        f"{base_reward:.3f}, its NLL under ρ_1 {base_nll:.3f} nats/transition; λ = {tilted.lam:.4f} gives the exact E_ρr[r] = {tilted.expected_reward():.3f} (2× the base); "
        f"ρ_r's entropy {tilted.entropy() / (tilted.length - 1):.3f} nats/transition (ρ_1's entropy rate {H:.3f}).",
        "`way` = (reward − base) / (exact − base): 0 is the base model, 1 the tilted law. `kl proxy` = NLL under ρ_r minus "
        "ρ_r's entropy, per transition (≈0 for samples of ρ_r, < 0 collapse, > 0 off the law). Evaluations: reward "
        "evaluations per returned sample (steering: lookaheads and the final score, all particles). Seconds: wall-clock "
        "for all the samples on the CPU it ran on (2 cores shared with other jobs, OMP_NUM_THREADS=1): rough. Fine-tuned "
        "rows give their training reward evaluations in the budget (policy gradient: seconds of training so far).",
        "",
        "| method | budget | mean reward | way | kl proxy | NLL under ρ_r | valid | distinct | reward evals | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, budget, r in rows:
        lines.append(f"| {method} | {budget} | {r['reward']:.3f} | {r['way']:+.2f} | {r['kl_proxy']:+.3f} | {r['nll_tilted']:.3f} "
                     f"| {100 * r['valid_transitions']:.1f}% | {100 * r['distinct']:.0f}% | {r['evaluations']:g} | {r['seconds']:.2f} |")
    lines += evaluation_summary(rows)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    plot(rows, tilted, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


def train_evals(budget: str) -> int | None:
    """The training reward evaluations a budget names ("1 step, 3840 train evals"), or None."""
    found = re.search(r"(\d+) train evals", budget)
    return int(found.group(1)) if found else None


def evaluation_summary(rows) -> list[str]:
    """Lines comparing the training reward evaluations of reward fine-tuning (its 1-step rows) with the policy-gradient
    baselines: how many evaluations each REINFORCE run needed to first reach the fine-tuned map's mean reward."""
    tuned = [(m, b, r) for m, b, r in rows if train_evals(b) and not m.startswith("policy gradient") and b.startswith("1 step")]
    curves: dict[str, list] = {}
    for m, b, r in rows:
        if m.startswith("policy gradient") and train_evals(b):
            curves.setdefault(m, []).append((train_evals(b), r["reward"]))
    if not tuned or not curves:
        return []
    lines = ["", "Reward evaluations in training (reward fine-tuning through the flow map against REINFORCE):", ""]
    ratios = []  # REINFORCE's evaluations over the fine-tune's, per pair (a lower bound where it never got there)
    for method, budget, r in tuned:
        mine = train_evals(budget)
        for name, curve in curves.items():
            reached = next((e for e, value in sorted(curve) if value >= r["reward"]), None)
            last_e, last_r = max(curve)
            if reached is None:
                lines.append(f"* {method} reaches {r['reward']:.3f} with {mine} evaluations; {name} ends at {last_r:.3f} after "
                             f"{last_e} (> {last_e / mine:.1f}x as many, and not there yet)")
            else:
                lines.append(f"* {method} reaches {r['reward']:.3f} with {mine} evaluations; {name} first reaches it after "
                             f"{reached} ({reached / mine:.1f}x as many)")
            ratios.append((reached or last_e) / mine)
    holds = min(ratios) >= 5
    lines += ["", f"Verdict: the claim that the flow map's reward gradient needs at least 5x fewer reward evaluations than "
              f"REINFORCE {'holds' if holds else 'does not hold'} here (REINFORCE needed {min(ratios):.1f}x to "
              f"{max(ratios):.1f}x the fine-tune's evaluations{'' if holds else '; why: docs/rewards.md, Status'})."]
    return lines


def plot(rows, tilted, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list] = {}
    for method, budget, r in rows:
        curves.setdefault(method, []).append((r["kl_proxy"], r["reward"]))
    for method, points in curves.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) > 1 else "*", label=method, markersize=5 if len(points) > 1 else 10)
    ax.axhline(tilted.expected_reward(), color="gray", ls="--", lw=1, label="exact E_ρr[r]")
    ax.axvline(0.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("KL proxy: NLL under ρ_r − H(ρ_r), nats / transition")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
