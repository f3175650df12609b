"""The small-scale study of issue 5: flow map, flow, MDLM and AR with the same backbone, trained on the
CPU, then put side by side by ``flowzoo benchmark`` (quality against NFE and wall-clock).

Per data set (``markov``, ``shakespeare``) it trains, with ``flowzoo fit`` and the shared settings in
``benchmarks/study/<data>.yaml`` (skipping any model whose ``pretrained`` directory exists; each run keeps the flags
it was trained with in ``flags.yaml`` and is reused only under the same ones):

- ``flow``: linear path, flow matching (cross-entropy), Euler sampler;
- ``flow_map``: distilled from that flow (``distill`` objective, FMLM recipe, student initialised from
  the teacher), ``flow_map`` sampler;
- ``flow_map_dmd`` (only when asked for in ``--methods``): that flow map fine-tuned with distribution
  matching of its one-step samples (``dmd`` objective, teacher: the flow, ``init_from``: the flow map);
- ``flow_map_refine`` (only when asked for): that flow map fine-tuned on the teacher's repairs of its own
  one-step samples (``refine`` objective, ``refine_from`` 0.4);
- ``mdlm``: masked path, MDLM NELBO, ancestral sampler;
- ``duo`` (only when asked for): uniform-state path, Duo NELBO with the Gaussian-relaxation curriculum over 10-20%
  of the training steps (Duo: 100k-200k of 1M) at GPT-2's kept-token rates (``reference_vocab=50257``), uniform
  ancestral sampler with the greedy tail;
- ``duo_dcd`` (only when asked for): that Duo model distilled with DCD (``--distill-steps``, 5 rounds, base 512 steps,
  lr 6e-5 as published);
- ``mdlm_sdtt`` (only when asked for): the MDLM model distilled with SDTT (``--distill-steps``, 4 rounds of 2 teacher
  steps from 128 steps: the student samples with 8, SDTT's last round; lr 3e-4 as published);
- ``ar``: autoregressive path, next-token cross-entropy, causal backbone, KV-cache sampler;
- on shakespeare, the judge: ``flowzoo judge fit --config configs/judge_shakespeare.yaml``;

then runs ``flowzoo benchmark --config benchmarks/study_<data>.yaml`` with the checkpoints it trained,
writing ``docs/benchmark/<data>/results.{json,md,png}``.

    python benchmarks/study.py --data markov
    python benchmarks/study.py --data shakespeare
    python benchmarks/study.py --data markov --tiny --runs /tmp/study --output /tmp/study/out   # smoke test
    python benchmarks/study.py --data markov --flow runs/flowmap_markov/teacher/teacher.ckpt     # reuse a flow
    python benchmarks/study.py --data shakespeare --max-steps 1500 --distill-steps 500 --judge-steps 2000  # reduced budget
    python benchmarks/study.py --data markov --methods flow_map --flow runs/study/markov/flow/pretrained \
        --train-flag flow_map:--model.objective.init_args.flow_map.boundary=0.25 --runs runs/study_b25 --no-benchmark  # a variant
    python benchmarks/study.py --data markov --methods flow_map_dmd --flow runs/study/markov/flow/pretrained \
        --flow-map runs/study_b25/markov/flow_map/pretrained --runs runs/study_dmd --no-benchmark  # its dmd fine-tune
    python benchmarks/study.py --data markov --methods duo,duo_dcd,mdlm,mdlm_sdtt --no-benchmark  # the distilled discrete baselines
    python benchmarks/study.py --data markov --methods flow_map_refine --flow runs/study/markov/flow/pretrained \
        --flow-map runs/study_b25/markov/flow_map/pretrained --runs runs/study_refine --no-benchmark  # its refine fine-tune
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("flow", "flow_map", "mdlm", "ar", "flow_map_dmd", "flow_map_refine", "duo", "duo_dcd", "mdlm_sdtt")
DEFAULT_METHODS = ("flow", "flow_map", "mdlm", "ar")
DISTILLED = ("flow_map", "flow_map_dmd", "flow_map_refine")  # methods trained from the flow, with their own step budget
DISCRETE_DISTILLED = {"duo_dcd": "duo", "mdlm_sdtt": "mdlm"}  # distilled discrete baselines and the model they distil
FINE_TUNE_EMA = 0.99  # a short fine-tune averages its own last ~100 steps (flowzoo's EMA with warm-up)
EMA_099 = [  # (these flags replace the config's callback list: benchmarks/learning_curves.py writes the decay into its config)
    "--trainer.callbacks=flowzoo.callbacks.EMA",
    f"--trainer.callbacks.decay={FINE_TUNE_EMA}",
]


def flow_map_flags(objective: str, steps: str, *own: str, fine_tune: bool = False) -> list[str]:
    """A flow map trained with ``objective`` from the flow (``{teacher}``) with the distillation's settings (teacher
    gap 0.05, lr 5e-4, betas (0.9, 0.95)), the objective's ``own`` options and ``{steps}`` steps; a ``fine_tune``
    starts from the distilled map (``{student}``) and averages its last ~100 steps (EMA 0.99)."""
    start = ["--model.objective.init_args.init_from={student}"] if fine_tune else []
    return [
        "--model.path=linear",
        "--model.path.init_args.time=tau",
        f"--model.objective={objective}",
        "--model.objective.init_args.teacher={teacher}",
        *start,
        "--model.objective.init_args.teacher_gap=0.05",
        *own,
        "--model.sampler=flow_map",
        "--model.sampler.init_args.steps=1",
        "--model.lr=0.0005",
        "--model.betas=[0.9,0.95]",
        "--model.warmup_steps=50",
        f"--trainer.max_steps={{{steps}}}",
        *(EMA_099 if fine_tune else []),
    ]


def parse_train_flags(parser: argparse.ArgumentParser, items: list[str], targets) -> list[tuple[str, str]]:
    """``--train-flag METHOD:--flag`` values as (METHOD, --flag) pairs; anything else, or a METHOD not among
    ``targets``, is a usage error that lists them."""
    pairs = [tuple(item.split(":", 1)) for item in items]
    bad = [item for item, parts in zip(items, pairs) if len(parts) != 2 or parts[0] not in targets or not parts[1].startswith("--")]
    if bad:
        parser.error(f"--train-flag expects METHOD:--flag with METHOD one of {', '.join(targets)}, got {bad}")
    return pairs


FLAGS = {
    "flow": ["--model.path=linear", "--model.path.init_args.time=tau", "--model.objective=flow_matching", "--model.sampler=euler", "--model.sampler.init_args.steps=128"],
    "flow_map": flow_map_flags("distill", "distill_steps"),
    "flow_map_dmd": flow_map_flags(
        "dmd", "dmd_steps", "--model.objective.init_args.dmd_weight=10", "--model.objective.init_args.num_generated=32", fine_tune=True
    ),
    "flow_map_refine": flow_map_flags(
        "refine", "refine_steps", "--model.objective.init_args.flow_map.boundary=0.25", "--model.objective.init_args.refine_from=0.4",
        "--model.objective.init_args.num_generated=32", fine_tune=True,
    ),
    "mdlm": ["--model.path=masked", "--model.objective=mdlm", "--model.sampler=ancestral", "--model.sampler.init_args.steps=128"],
    "ar": ["--model.path=autoregressive", "--model.objective=ar", "--model.sampler=ar", "--model.backbone.init_args.causal=true"],
    "duo": [
        "--model.path=uniform",
        "--model.objective=duo",
        "--model.objective.init_args.curriculum_start={curriculum_start}",
        "--model.objective.init_args.curriculum_end={curriculum_end}",
        "--model.objective.init_args.reference_vocab=50257",
        "--model.sampler=uniform_ancestral",
        "--model.sampler.init_args.steps=128",
        "--model.sampler.init_args.noise_removal=greedy",
    ],
    "duo_dcd": [
        "--model.path=uniform",
        "--model.objective=dcd",
        "--model.objective.init_args.teacher={teacher}",
        "--model.objective.init_args.reference_vocab=50257",
        "--model.objective.init_args.base_steps=512",
        "--model.objective.init_args.round_steps={round_steps_5}",
        "--model.sampler=uniform_ancestral",
        "--model.sampler.init_args.steps=8",
        "--model.sampler.init_args.noise_removal=greedy",
        "--model.lr=0.00006",
        "--model.warmup_steps=50",
        "--trainer.max_steps={distill_steps}",
    ],
    "mdlm_sdtt": [
        "--model.path=masked",
        "--model.objective=sdtt",
        "--model.objective.init_args.teacher={teacher}",
        "--model.objective.init_args.base_steps=128",
        "--model.objective.init_args.rounds=4",
        "--model.objective.init_args.round_steps={round_steps_4}",
        "--model.sampler=ancestral",
        "--model.sampler.init_args.steps=8",
        "--model.lr=0.0003",
        "--model.lr_schedule=constant",
        "--model.warmup_steps=50",
        "--trainer.max_steps={distill_steps}",
    ],
}
TINY_TRAIN = [
    "--model.backbone.init_args.width=32",
    "--model.backbone.init_args.depth=1",
    "--model.backbone.init_args.heads=2",
    "--model.backbone.init_args.cond_dim=32",
    "--model.num_val_samples=0",
    "--trainer.limit_val_batches=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.precision=32-true",
]
TINY_DATA = {"markov": ["--data.init_args.num_train=256", "--data.init_args.num_val=64", "--data.init_args.batch_size=16"], "shakespeare": ["--data.init_args.batch_size=8"]}
TINY_DATA["mirror"] = TINY_DATA["markov"]  # benchmarks/learning_curves.py


def run(cmd: list[str], threads: int) -> None:
    print("+", " ".join(cmd), flush=True)
    # PYTHONSAFEPATH: `python -m` from the repository root would put its folders (kernels/, paths/, ...) on sys.path
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONSAFEPATH": "1"}
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def flowzoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowzoo", *args]


FLAGS_RECORD = "flags.yaml"  # the flags a run was trained with, beside its fit.yaml


def check_flags(out: Path, flags: list[str]) -> None:
    """Refuse to reuse or resume the run in ``out`` under other flags than it was trained with (the flags the caller
    records: its step counts, ``--tiny``'s, the data and ``--train-flag`` ones that reach the method): a model trained
    for one ablation would otherwise be read as another's, or finished with a second one's settings. Runs that
    predate the record are taken as they are."""
    saved = out / FLAGS_RECORD
    if not saved.is_file():
        return
    trained = yaml.safe_load(saved.read_text()) or []
    if trained != flags:
        there, here = [f for f in trained if f not in flags], [f for f in flags if f not in trained]
        raise SystemExit(
            f"{out} was trained with other flags ({saved}): {there or 'none'} there, {here or 'none'} here"
            + (" (the same flags in another order)" if not there and not here else "")
            + ". Use another --runs folder for these flags, or give the run's own."
        )


def record_flags(out: Path, flags: list[str]) -> None:
    """Write the flags the run in ``out`` is trained with (:func:`check_flags` reads them)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / FLAGS_RECORD).write_text(yaml.safe_dump(flags))


def start_flags(out: Path, name: str, flags: list[str]) -> list[str] | None:
    """:func:`resume_flags` for a run trained with ``flags``: refused when ``out`` was trained with others
    (:func:`check_flags`), and ``flags`` recorded when the run is started or resumed."""
    check_flags(out, flags)
    resume = resume_flags(out, name)
    if resume is not None:
        record_flags(out, flags)
    return resume


def resume_flags(out: Path, name: str) -> list[str] | None:
    """None when ``out`` holds a finished run (its ``pretrained/`` is used as it is); else the flags its fit needs:
    ``--ckpt_path last`` for a run that stopped before its ``max_steps`` (an interrupted run also writes
    ``pretrained/``, at the step it reached: it is resumed exactly, never used half-trained) or was killed before
    writing ``pretrained/`` (SIGKILL, SIGTERM) with a ``last.ckpt`` kept, [] to train afresh."""
    from flowzoo.runs import stopped_early

    last = (out / "checkpoints" / "last.ckpt").is_file()
    if (out / "pretrained" / "config.json").is_file():
        early = stopped_early(out)
        if early is None:
            print(f"= {name}: {out / 'pretrained'} exists, not retrained", flush=True)
            return None
        how = f"stopped at step {early[0]} of {early[1]}"
    elif last:
        how = "ended without pretrained/ (killed mid-run)"
    else:
        return []  # nothing there: train
    if not last:
        print(f"= {name}: {out} {how} and kept no last.ckpt; trained afresh", flush=True)
        return []
    print(f"= {name}: {out} {how}; resumed from its last.ckpt", flush=True)
    return ["--ckpt_path", "last"]


def train(data: str, method: str, runs: Path, args, teacher: Path | None, student: Path | None = None) -> Path:
    """Train one method (unless its pretrained directory exists); returns the checkpoint to benchmark: ``flowzoo fit``
    writes ``<out>/version_N/pretrained`` at the end of every run, ``<out>/pretrained`` points to the newest."""
    given = getattr(args, method)
    if given:
        return Path(given)
    out = runs / data / method
    distill_steps = args.distill_steps if not args.tiny else 3
    shared = yaml.safe_load((ROOT / "benchmarks" / "study" / f"{data}.yaml").read_text())
    steps = 4 if args.tiny else (args.max_steps or shared["trainer"]["max_steps"])
    values = {"teacher": teacher, "student": student, "distill_steps": distill_steps,
              "dmd_steps": args.dmd_steps if not args.tiny else 3, "refine_steps": args.refine_steps if not args.tiny else 3,
              "curriculum_start": max(1, steps // 10), "curriculum_end": max(2, steps // 5),
              "round_steps_5": max(1, distill_steps // 5), "round_steps_4": max(1, distill_steps // 4)}
    flags = [f.format(**values) for f in FLAGS[method]]
    extra = TINY_TRAIN + TINY_DATA[data] + ["--trainer.max_steps=4"] if args.tiny else []
    if args.tiny and (method in DISTILLED or method in DISCRETE_DISTILLED):
        extra = [e for e in extra if not e.startswith("--trainer.max_steps")]
    if args.max_steps and not args.tiny and method not in DISTILLED and method not in DISCRETE_DISTILLED:  # a reduced budget, the same for every method
        extra = [f"--trainer.max_steps={args.max_steps}", f"--trainer.val_check_interval={min(1000, args.max_steps)}"]
    extra += [flag for target, flag in args.train_flags if target == method]
    # the teacher's and student's paths are left out of the record: one run may be named two ways
    recorded = [f.format(**values) for f in FLAGS[method] if "{teacher}" not in f and "{student}" not in f] + extra
    resume = start_flags(out, method, recorded)
    if resume is None:
        return out / "pretrained"
    cmd = flowzoo("fit", "--config", str(ROOT / "benchmarks" / "study" / f"{data}.yaml"), *flags, f"--trainer.default_root_dir={out}", *extra, *resume)
    run(cmd, args.threads)
    return out / "pretrained"


def train_judge(data: str, out: Path, args, data_flags: list[str] | tuple[str, ...] = ()) -> Path:
    """The GenPPL judge: ``--judge``, or the one in ``out`` (trained there with ``configs/judge_<data>.yaml`` and
    ``data_flags`` unless finished; a run stopped part-way is resumed, not used half-trained)."""
    if args.judge:
        return Path(args.judge)
    extra = TINY_TRAIN + TINY_DATA[data] + ["--trainer.max_steps=4"] if args.tiny else []
    if args.judge_steps and not args.tiny:
        extra = [f"--trainer.max_steps={args.judge_steps}", "--trainer.precision=bf16-mixed"]
    resume = start_flags(out, "judge", [*data_flags, *extra])  # a judge of characters is not one of BPE tokens
    if resume is None:
        return out / "pretrained"
    run(flowzoo("judge", "fit", "--config", str(ROOT / "configs" / f"judge_{data}.yaml"), f"--trainer.default_root_dir={out}",
                *data_flags, *extra, *resume), args.threads)
    return out / "pretrained"


def benchmark_config(data: str, checkpoints: dict[str, Path], judge: Path | None, runs: Path, args) -> Path:
    """benchmarks/study_<data>.yaml with this run's checkpoints (and a reduced grid with --tiny)."""
    config = yaml.safe_load((ROOT / "benchmarks" / f"study_{data}.yaml").read_text())
    config["models"] = [m for m in config["models"] if m["method"] in checkpoints]
    for m in config["models"]:
        m["checkpoint"] = str(checkpoints[m["method"]])
    if config.get("judge"):
        config["judge"] = str(judge)
    config["output"] = str(args.output or ROOT / config["output"])
    config["threads"] = args.threads
    if args.tiny:
        config.update(num_samples=8, batch_size=4, repeats=1, val_batches=1)
        for m in config["models"]:
            for s in m["samplers"]:
                if isinstance(s.get("steps"), list):
                    s["steps"] = [v for v in s["steps"] if v <= 8]
    path = runs / data / "benchmark.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("markov", "shakespeare"), default="markov")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--runs", default="runs/study", help="where the trained models go")
    parser.add_argument("--output", help="benchmark output directory (default: the config's, docs/benchmark/<data>)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for training and benchmarking")
    parser.add_argument("--distill-steps", type=int, default=1000, help="training steps of the flow-map student")
    parser.add_argument("--dmd-steps", type=int, default=1200, help="training steps of the dmd fine-tune of the flow map")
    parser.add_argument("--refine-steps", type=int, default=800, help="training steps of the refine fine-tune of the flow map")
    parser.add_argument("--max-steps", type=int, help="training steps of flow, MDLM and AR (default: the shared config's)")
    parser.add_argument("--judge-steps", type=int, help="training steps of the judge, in bf16 (default: its config's)")
    parser.add_argument("--train-flag", action="append", default=[], metavar="METHOD:FLAG",
                        help="one more `flowzoo fit` flag for one method (repeatable), e.g. flow_map:--model.objective.init_args.flow_map.boundary=0.25")
    parser.add_argument("--tiny", action="store_true", help="a few steps of tiny models and a reduced grid: an end-to-end check")
    parser.add_argument("--no-benchmark", action="store_true", help="only train")
    for method in METHODS:
        parser.add_argument(f"--{method.replace('_', '-')}", dest=method, help=f"use this {method} checkpoint instead of training one")
    parser.add_argument("--judge", help="use this judge (transformers name/path or flowzoo AR checkpoint) instead of training one")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.train_flags = parse_train_flags(parser, args.train_flag, METHODS)
    runs = (ROOT / args.runs).resolve()

    checkpoints: dict[str, Path] = {}
    if {"flow", *DISTILLED} & set(methods):
        checkpoints["flow"] = train(args.data, "flow", runs, args, None)
    if set(DISTILLED) & set(methods):
        checkpoints["flow_map"] = train(args.data, "flow_map", runs, args, checkpoints["flow"])
    for method in ("flow_map_dmd", "flow_map_refine"):  # fine-tunes of the flow map
        if method in methods:
            checkpoints[method] = train(args.data, method, runs, args, checkpoints["flow"], checkpoints["flow_map"])
    for method in ("mdlm", "ar", "duo"):
        if method in methods or any(DISCRETE_DISTILLED.get(m) == method for m in methods):
            checkpoints[method] = train(args.data, method, runs, args, None)
    for method, base in DISCRETE_DISTILLED.items():
        if method in methods:
            checkpoints[method] = train(args.data, method, runs, args, checkpoints[base])
    for method in ("flow", "flow_map", "mdlm", "duo"):
        if method not in methods:
            checkpoints.pop(method, None)
    config = yaml.safe_load((ROOT / "benchmarks" / f"study_{args.data}.yaml").read_text())
    judge = train_judge(args.data, runs / args.data / "judge", args) if config.get("judge") else None
    if args.no_benchmark:
        return
    run(flowzoo("benchmark", "--config", str(benchmark_config(args.data, checkpoints, judge, runs, args))), args.threads)


if __name__ == "__main__":
    main()
