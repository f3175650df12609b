"""Learning curves at equal training compute: flow, flow map, MDLM and AR with the same backbone, against FLOPs.

For one data set (``shakespeare``, ``markov`` or ``mirror``), with the shared settings of
``benchmarks/study/<data>.yaml`` and each method's flags from ``benchmarks/study.py``:

1. trains flow, MDLM and AR for ``--budget`` steps, saving a checkpoint every ``--every`` steps (Lightning's
   ``ModelCheckpoint(every_n_train_steps=K, save_top_k=-1)``; the EMA weights, as every flowzoo checkpoint) and
   ``last.ckpt`` at least every 250 steps (:func:`last_every`);
2. distils a flow map (``distill``, the study's recipe) for ``--distill-steps`` from each chosen flow checkpoint
   (``--distill-at``, default every one), and with ``flow_map_dmd`` among ``--methods`` fine-tunes each map with
   ``dmd`` (the study's ``flow_map_dmd`` recipe) for ``--dmd-steps``;
3. samples every checkpoint (or those of ``--score-at``; flow: Euler ``--flow-steps``; flow map: ``--map-steps``;
   MDLM: ancestral ``--mdlm-steps``; AR) and scores the samples as ``flowzoo benchmark`` does: GenPPL under the judge and unigram
   entropy on text; valid transitions / NLL on markov; pair match / valid sequences / NLL on mirror;
4. writes ``curves.md`` (a table), ``curves.json`` and ``curves.png`` (each metric against training FLOPs) into
   ``--output``.

Training compute is estimated, not measured:

    training       C(k) = 6 * N * B * L * k                   (N parameters, B * L tokens a step, k steps; the
                                                               factor is 8 with self-conditioning's extra forward)
    distillation   C = C_flow(k) + (6 * N_student + 2 * N_teacher) * B * L * d    (d steps, one teacher forward per
                                                               token, two with teacher_self_condition; the
                                                               student's own no-grad target passes are not counted)
    dmd fine-tune  C = C_map + d' * [(6 N_s + 2 N_t) B L + ((6 + 2 (c-1)) N_s + (4 + 6 c) N_t) G L]
                                                              (d' steps; G one-step samples a step, c critic steps:
                                                               the generator, D^real, D^fake, the critic's training;
                                                               (4 + 12 c) N_t G L more with the GAN term; the
                                                               generator's 6 is 6 + 2 (k - 1) + 2 k (c - 1) + 6 r with
                                                               generator_steps (mean k) and the paired regression
                                                               on a fraction r of the samples)

``--extend RUNS`` continues flow, MDLM and AR from their runs in another ``--runs`` folder instead of training them
from scratch: each resumes its last step checkpoint there (step K, with its optimizer, EMA and step count) on this
``--budget``'s schedule, so the cosine rate goes back up to its value at step K of the longer schedule (a warm
restart, not a run planned for ``--budget`` from step 0), and the source's checkpoints up to K are linked in as the
curve's earlier points; FLOPs count all ``--budget`` steps alike.

Every step is cached: a model whose last checkpoint exists is not retrained (an interrupted run resumes from its
``last.ckpt``; each run keeps the flags it was trained with in ``flags.yaml`` and is reused or resumed under the same
flags only, so an ablation given the baseline's ``--runs`` is refused, not read from the baseline), a checkpoint
already scored (``<runs>/<data>/scores/n<N>_seed<S>[_judge-<digest of the judge's weights>]/*.json``) is not sampled
again; under another judge it is scored again.

    python benchmarks/learning_curves.py --data markov --tiny --runs /tmp/curves --output /tmp/curves/out   # seconds
    python benchmarks/learning_curves.py --data shakespeare --budget 15000 --every 1500 --distill-steps 500 \\
        --judge runs/study/shakespeare/judge/pretrained --runs runs/curves --output docs/benchmark/curves/shakespeare
    python benchmarks/learning_curves.py ... --train-flag flow:--model.objective.init_args.loss_weighting=learned  # an ablation
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from flowzoo.runs import latest_run, step_checkpoints

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("flowzoo_study", ROOT / "benchmarks" / "study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

DATA = ("shakespeare", "markov", "mirror")
TRAINED = ("flow", "mdlm", "ar")  # trained from scratch with checkpoints along the way
DEFAULT_METHODS = (*TRAINED, "flow_map")  # flow_map: distilled from flow checkpoints
METHODS = (*DEFAULT_METHODS, "flow_map_dmd")  # flow_map_dmd (when asked for): each map fine-tuned with dmd
FLAG_TARGETS = (*METHODS, "all")
SAMPLER = {"flow": "euler", "flow_map": "flow_map", "flow_map_dmd": "flow_map", "mdlm": "ancestral", "ar": "ar"}
LABEL = {"flow": "flow", "flow_map": "flow map", "flow_map_dmd": "flow map + dmd", "mdlm": "MDLM", "ar": "AR"}
METRICS = {  # per data set: (metric, higher is better); entropy: closer to the data's
    "shakespeare": [("gen_ppl", False), ("entropy", None)],
    "markov": [("valid_transitions", True), ("nll", False), ("entropy", None)],
    "mirror": [("valid_sequences", True), ("pair_match", True), ("nll", False), ("entropy", None)],
}


# --- compute ---------------------------------------------------------------------------------------


def training_flops(parameters: int, tokens_per_step: int, steps: int, self_condition: bool = False) -> float:
    """6 N T k: forward (2 N) and backward (4 N) per token; 8 N T k with self-conditioning's no-grad first pass."""
    return (8.0 if self_condition else 6.0) * parameters * tokens_per_step * steps


def distillation_flops(student: int, teacher: int, tokens_per_step: int, steps: int, teacher_passes: int = 1) -> float:
    """(6 N_student + 2 P N_teacher) T d: the student's training and P teacher forwards per token (P = 2 for a
    self-conditioning teacher read with its own first prediction, ``teacher_self_condition``)."""
    return (6.0 * student + 2.0 * teacher_passes * teacher) * tokens_per_step * steps


def dmd_flops(student: int, teacher: int, tokens_per_step: int, generated_tokens: int, steps: int, critic_steps: int = 1,
              teacher_passes: int = 1, gan: bool = False, mean_generator_steps: float = 1.0,
              regressed_fraction: float = 0.0) -> float:
    """A ``dmd`` fine-tune's d steps: ``distill``'s losses on the batch (:func:`distillation_flops`) plus, on the G·L
    tokens of its samples, the generator's forward and backward (6 N_s), D^real and D^fake reads (2 N_t each; the
    critic is a copy of the teacher) and c critic steps (6 N_t each; those after the first on fresh samples, 2 N_s):
    ((6 + 2 (c - 1)) N_s + (4 + 6 c) N_t) G·L a step. With the GAN term (``gan``) the critic's steps also train the
    discriminator on as many data rows and samples (12 N_t each step) and the map's loss reads it with a gradient to
    its input (4 N_t): (4 + 12 c) N_t G·L more. A multi-step generator (``generator_steps``, its rows' mean step
    count k̄) adds k̄ - 1 jumps without gradient to each draw (2 N_s each, so every fresh draw costs 2 k̄ N_s); the
    paired regression (``step_regression_weight``) a forward and backward of the 1-step map on the fraction r of
    rows it fits: ((6 + 2 (k̄ - 1) + 2 k̄ (c - 1) + 6 r) N_s + ...) G·L."""
    critic = (4.0 + 6.0 * critic_steps) + ((4.0 + 12.0 * critic_steps) if gan else 0.0)
    k = mean_generator_steps
    generator = 6.0 + 2.0 * (k - 1) + 2.0 * k * (critic_steps - 1) + 6.0 * regressed_fraction
    generated = (generator * student + critic * teacher) * generated_tokens
    return distillation_flops(student, teacher, tokens_per_step, steps, teacher_passes) + generated * steps


class DmdSetting(NamedTuple):
    """What :func:`dmd_flops` reads of a ``dmd`` config: G samples a step, c critic steps, the GAN term, the
    samples' mean step count k̄ and the fraction r of rows the paired regression fits."""

    generated: int
    critic_steps: int
    gan: bool
    mean_generator_steps: float = 1.0
    regressed_fraction: float = 0.0


def dmd_setting(config: dict[str, Any]) -> DmdSetting:
    """A ``dmd`` model config's :class:`DmdSetting` (``num_generated`` 0: the batch size; the generator's rows split
    into ``generator_steps``' contiguous blocks by :func:`flowzoo.objectives.dmd.steps_per_sample`, as the objective does);
    refused when it uses what :func:`dmd_flops` does not count (self-conditioned score reads)."""
    from flowzoo.objectives.dmd import steps_per_sample

    options = (config.get("objective") or {}).get("init_args") or {}
    if options.get("score_self_condition", False):
        raise SystemExit("the dmd FLOPs estimate counts one-pass score reads; this model has {'score_self_condition': True}")
    generated = int(options.get("num_generated", 0)) or int(((config.get("data") or {}).get("init_args") or {})["batch_size"])
    rows = steps_per_sample(options.get("generator_steps", [1]), generated)  # each sample's step count, as DMD splits them
    regressed = rows.count(max(rows)) / generated if float(options.get("step_regression_weight", 0.0)) > 0 else 0.0
    return DmdSetting(generated, int(options.get("critic_steps", 1)), float(options.get("gan_weight", 0.0)) > 0,
                      sum(rows) / generated, regressed)


# --- training --------------------------------------------------------------------------------------


LAST_EVERY = 250  # the most steps a killed run loses: last.ckpt is written at least this often


def last_every(every: int, most: int = LAST_EVERY) -> int:
    """How often ``last.ckpt`` is written: the largest divisor of ``every`` that is at most ``most`` (so every curve
    point is also a ``last.ckpt`` save and a killed run loses fewer than ``most`` steps, not up to ``every``)."""
    return max(d for d in range(1, min(every, most) + 1) if every % d == 0)


def fit_config(data: str, steps: int, every: int, out: Path, last_most: int = LAST_EVERY, ema_decay: float | None = None) -> Path:
    """The study's shared settings with ``steps`` steps and a checkpoint every ``every`` steps, written to ``out``;
    ``last.ckpt`` every :func:`last_every` steps; its EMA's decay set to ``ema_decay`` when given (a fine-tune's).

    One ModelCheckpoint keeps the points (``step=K.ckpt``, ``save_last`` off); a second one alone writes
    ``last.ckpt`` (``save_top_k=0``, no version counter: two callbacks writing ``last.ckpt``, or one resumed beside
    an older ``last.ckpt`` it did not write, make Lightning write ``last-v1.ckpt`` and leave ``last.ckpt`` behind)."""
    config = yaml.safe_load((ROOT / "benchmarks" / "study" / f"{data}.yaml").read_text())
    trainer = config["trainer"]
    trainer["max_steps"] = steps
    trainer["val_check_interval"] = min(int(trainer.get("val_check_interval", every)), every, steps)
    last = last_every(every, last_most)
    checkpoint = "lightning.pytorch.callbacks.ModelCheckpoint"
    points = {"filename": "{step}", "every_n_train_steps": every, "save_top_k": -1, "save_last": last == every,
              "enable_version_counter": False}
    trainer["callbacks"] = [c for c in trainer.get("callbacks", []) if "ModelCheckpoint" not in c["class_path"]]
    if ema_decay is not None:
        emas = [c for c in trainer["callbacks"] if c["class_path"].endswith(".EMA")]
        if not emas:
            raise SystemExit(f"benchmarks/study/{data}.yaml has no EMA callback to set the fine-tune's decay {ema_decay} on")
        for c in emas:
            c.setdefault("init_args", {})["decay"] = ema_decay
    trainer["callbacks"].append({"class_path": checkpoint, "init_args": points})
    if last != every:  # (the same cadence in two callbacks would be one Lightning state key: the points' one writes it)
        trainer["callbacks"].append({"class_path": checkpoint, "init_args": {
            "every_n_train_steps": last, "save_top_k": 0, "save_last": True, "enable_version_counter": False}})
    config["model"]["num_val_samples"] = 0  # the samples are scored after training, every checkpoint alike
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_budget(out: Path, steps: int) -> None:
    """Refuse to resume a run in ``out`` under another budget: its learning rate decays (cosine) to its own
    ``max_steps``, so a larger budget would raise the rate again from the floor and the later checkpoints would
    belong to neither schedule. An interrupted run under the same budget resumes exactly."""
    saved = out / "fit.yaml"
    if not (out / "checkpoints" / "last.ckpt").is_file() or not saved.is_file():
        return
    budget = (yaml.safe_load(saved.read_text()).get("trainer") or {}).get("max_steps")
    if budget is not None and int(budget) != steps:
        raise SystemExit(
            f"{out} was trained with a budget of {budget} steps (its learning rate decays to step {budget}); resuming "
            f"it to {steps} would change its schedule part-way. Use another --runs folder for a budget of {steps}."
        )


def extension_start(source: Path, steps: int) -> tuple[int, Path]:
    """(K, checkpoint) an extended run resumes: the last step checkpoint of ``source`` (the same method's run in the
    ``--extend`` folder) before step ``steps``; refused when there is none."""
    found = {k: path for k, path in step_checkpoints(source).items() if k < steps}
    if not found:
        there = sorted(step_checkpoints(source))
        raise SystemExit(f"--extend: no step checkpoint before step {steps} in {source} to continue from"
                         + (f" (there are steps {there})" if there else " (it has none)"))
    start = max(found)
    return start, found[start]


def link_extended_points(source: Path, out: Path, start: int) -> None:
    """Link ``source``'s step checkpoints up to step ``start`` into ``out``'s newest run, beside the steps trained there
    from ``start`` on, so the extended curve keeps its earlier points (the links are the source's files, not copies)."""
    folder, trained = (latest_run(out) or out) / "checkpoints", step_checkpoints(out)
    for step, path in step_checkpoints(source).items():
        link = folder / path.name
        if step <= start and step not in trained and not link.exists():
            link.symlink_to(path)


def train(method: str, out: Path, steps: int, every: int, args, teacher: Path | None = None, student: Path | None = None,
          extend: Path | None = None) -> dict[int, Path]:
    """Train ``method`` into ``out`` (unless its step-``steps`` checkpoint exists; an interrupted run resumes from its
    last.ckpt), distilled from ``teacher`` and fine-tuned from ``student`` where the method is, or continued from the
    same method's run ``extend`` (:func:`extension_start`); returns its checkpoints by step."""
    start = extension_start(extend, steps) if extend is not None else None
    extra = (study.TINY_TRAIN + study.TINY_DATA[args.data]) if args.tiny else []
    extra += args.data_flags + [flag for target, flag in args.train_flags if target in (method, "all")]
    study.check_flags(out, extra)
    found = curve_points(out, steps, every)
    if steps in found:
        if start is not None:
            link_extended_points(extend, out, start[0])
            found = curve_points(out, steps, every)
        print(f"= {out.name}: trained ({len(found)} checkpoints), not retrained", flush=True)
        return found
    check_budget(out, steps)
    flags = [f.format(teacher=teacher, student=student, distill_steps=steps, dmd_steps=steps) for f in study.FLAGS[method]]
    fine_tune = set(study.EMA_099) <= set(flags)  # the study's fine-tune EMA, whose flags would drop the checkpoint callbacks
    flags = [f for f in flags if not (fine_tune and f in study.EMA_099)]
    config = fit_config(args.data, steps, every, out, ema_decay=study.FINE_TUNE_EMA if fine_tune else None)
    study.record_flags(out, extra)
    resume = ["--ckpt_path", "last"] if (out / "checkpoints" / "last.ckpt").is_file() else []
    if start is not None and not resume:
        print(f"+ {out.name}: continued from step {start[0]} of {start[1]} on the {steps}-step schedule", flush=True)
        resume = ["--ckpt_path", str(start[1])]
    study.run(study.flowzoo("fit", "--config", str(config), *flags, f"--trainer.default_root_dir={out}", *extra, *resume), args.threads)
    if start is not None:
        link_extended_points(extend, out, start[0])
    found = curve_points(out, steps, every)
    if steps not in found:
        raise SystemExit(f"{out}: training ended without its step-{steps} checkpoint (found steps {sorted(found)})")
    return found


def curve_points(out: Path, steps: int, every: int) -> dict[int, Path]:
    """The run's checkpoints at the curve's steps (multiples of ``every``, and ``steps``), by step: a run stopped by
    Ctrl-C or SIGTERM also saves the step it stopped at (``step=12528.ckpt``), which is no point of the curve."""
    return {k: path for k, path in step_checkpoints(out).items() if k % every == 0 or k == steps}


def shown_path(path: Path) -> str:
    """``path`` as the tables print it: relative to the repository when inside it (no machine's own folders in docs/)."""
    absolute = Path(os.path.abspath(path))  # not resolve(): a run's `pretrained` link stays as named
    return str(absolute.relative_to(ROOT)) if absolute.is_relative_to(ROOT) else str(path)


def train_judge(runs: Path, args) -> Path:
    """The GenPPL judge: ``--judge``, or one trained in ``runs/judge`` with ``configs/judge_<data>.yaml`` (and
    ``--data-flag``), as the study trains its own (``study.train_judge``)."""
    return study.train_judge(args.data, runs / "judge", args, args.data_flags)


# --- measuring ------------------------------------------------------------------------------------


def sampler_entries(method: str, args) -> list[dict[str, Any]]:
    """The samplers a checkpoint of ``method`` is scored with."""
    if method == "ar":
        return [{"name": "ar"}]
    steps = {"flow": args.flow_steps, "flow_map": args.map_steps, "flow_map_dmd": args.map_steps, "mdlm": args.mdlm_steps}[method]
    init_args = {"grid": args.euler_grid, "gamma": args.euler_gamma} if method == "flow" else {}
    return [{"name": SAMPLER[method], "steps": list(steps), "init_args": init_args}]


EULER_DEFAULTS = {"grid": "linspace", "gamma": 0.0}  # the Euler sampler's options as the curves default them


def score_name(method: str, step: int, args) -> str:
    """The cache name of a checkpoint's scores: ``mdlm@K``; the flow's carries its Euler options that are not the
    defaults (``flow@K_grid-uniform_gamma-0.3``), so other options are scored apart and the rest is reused."""
    name = f"{method}@{step}"
    if method == "flow":
        chosen = {"grid": args.euler_grid, "gamma": args.euler_gamma}
        name += "".join(f"_{key}-{value}" for key, value in chosen.items() if value != EULER_DEFAULTS[key])
    return name


def judge_key(judge: Path | None) -> str:
    """What a judge's scores are filed under: the digest of its weights (flowzoo.judges.weights_digest), so a judge
    retrained in place or copied elsewhere is told apart by what it is, not by its path; a ``transformers`` name is
    its own key; ``""`` without a judge."""
    from flowzoo.judges import weights_digest

    if judge is None:
        return ""
    return weights_digest(judge) or hashlib.sha256(str(judge).encode()).hexdigest()[:12]


def score_folder(runs: Path, args, judge: Path | None) -> Path:
    """``<runs>/<data>/scores/n<N>_seed<S>[_disjoint][_judge-<key>]``: the scores of one sample count, seed and GenPPL
    judge, so scores under another judge are never read back as this one's. A seed other than 0 carries
    ``_disjoint``: its draws are ``flowzoo.sampling.batch_seed``'s, which share none with seed 0's, and a folder
    scored before (batch b seeded seed + b: seed 1 redrew a quarter of seed 0's samples) is not read back."""
    key = judge_key(judge)
    seed = f"seed{args.seed}" + ("_disjoint" if args.seed else "")
    return runs / "scores" / (f"n{args.num_samples}_{seed}" + (f"_judge-{key}" if key else ""))


def cached(cache: Path, compute) -> Any:
    """``compute()``, written to ``cache`` as JSON; read from there when it exists."""
    if cache.is_file():
        return json.loads(cache.read_text())
    found = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(found, indent=2, default=str) + "\n")
    return found


def score(entry: dict[str, Any], cache: Path, args, judge: Path | None) -> dict[str, Any]:
    """``flowzoo benchmark``'s rows of one checkpoint with its samplers, cached in ``cache``."""
    from flowzoo.benchmark import load_config, run

    def compute():
        config = load_config(None, name=entry["name"], models=[entry], num_samples=args.num_samples, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, threads=args.threads, judge=str(judge) if judge else None,
                             warmup=1, repeats=1, val_batches=args.val_batches, reference=False)
        results = run(config)
        return {"rows": results["rows"], "validation": results["models"][entry["name"]]["validation"]}

    return cached(cache, compute)


def model_facts(checkpoint: Path) -> dict[str, Any]:
    """The parameter count and the config (components, data) of a checkpoint."""
    from flowzoo.checkpoints import load_checkpoint

    model = load_checkpoint(str(checkpoint))
    return {"parameters": sum(p.numel() for p in model.parameters()), "config": model.config()}


def reference_metrics(checkpoint: Path, cache: Path, args, judge: Path | None) -> dict[str, Any]:
    """The metrics of ``--num-samples`` real validation sequences of the checkpoint's data, scored as the samples are."""
    import torch

    from flowzoo.benchmark import score as score_tokens
    from flowzoo.judges import load_judge
    from flowzoo.sampling import data_from_spec

    def compute():
        data = data_from_spec(model_facts(checkpoint)["config"]["data"])
        rows = data.splits["validation"]
        real = torch.stack([rows[i]["input_ids"] for i in range(min(args.num_samples, len(rows)))])
        scorer = load_judge(str(judge), device=args.device) if judge else None
        return score_tokens(real[:, : data.seq_len], data, scorer)

    return cached(cache, compute)


def tokens_per_step(config: dict[str, Any]) -> int:
    """B * L of the training run whose model config (``FlowLM.config()``) this is."""
    data = (config.get("data") or {}).get("init_args") or {}
    if "batch_size" not in data or "seq_len" not in data:
        raise SystemExit(f"the checkpoint records no data batch size and length: {config.get('data')}")
    return int(data["batch_size"]) * int(data["seq_len"])


def config_flag(config: dict[str, Any], part: str, key: str) -> bool:
    """A boolean option of one component (``backbone``, ``objective``) of a model config; False when absent."""
    return bool(((config.get(part) or {}).get("init_args") or {}).get(key, False))


def self_conditioned(config: dict[str, Any]) -> bool:
    return config_flag(config, "backbone", "self_condition")


def teacher_self_conditioned(config: dict[str, Any]) -> bool:
    """Whether a distilled map's teacher was read with two passes (the distill objective's teacher_self_condition)."""
    return config_flag(config, "objective", "teacher_self_condition")


def points(method: str, step: int, scored: dict[str, Any], flops: float, parameters: int, distill: int | None = None,
           dmd: int | None = None) -> list[dict[str, Any]]:
    """One point per sampler row of a scored checkpoint (a map's: its distillation steps, and its dmd fine-tune's)."""
    out = []
    for row in scored["rows"]:
        series = LABEL[method] if method == "ar" else f"{LABEL[method]}, {row['sampler_label']} {row.get('steps')}"
        out.append({"series": series, "method": method, "steps": row.get("steps"), "train_step": step, "distill_steps": distill,
                    **({"dmd_steps": dmd} if dmd else {}), "nfe": row["nfe"],
                    "flops": flops, "parameters": parameters, "metrics": row["metrics"],
                    "validation": scored.get("validation"), "example": row.get("example")})
    return out


# --- the goals at equal compute -------------------------------------------------------------------

PRIMARY = {"shakespeare": ("gen_ppl", False), "markov": ("valid_transitions", True), "mirror": ("pair_match", True)}
GOALS = (  # (method, sampler steps) against (method, sampler steps): issue 20's two goals
    (("flow", 128), ("mdlm", 128)),
    (("flow_map", 1), ("mdlm", 8)),
    (("flow_map_dmd", 1), ("mdlm", 8)),  # rows only when flow_map_dmd was scored
)
FLOPS_TOLERANCE = 0.02  # a FLOPs figure this close past a curve's end reads its end (N differs by the mask token)


def curve(results: dict[str, Any], method: str, steps: int, metric: str) -> list[tuple[float, float]]:
    """(FLOPs, metric) of one series, by FLOPs; AR's series is every AR point whatever ``steps`` is."""
    found = [(p["flops"], p["metrics"].get(metric)) for p in results["points"]
             if p["method"] == method and (method == "ar" or p.get("steps") == steps)]
    return sorted((f, float(v)) for f, v in found if v is not None and not math.isnan(float(v)))


def at_flops(points: list[tuple[float, float]], flops: float) -> float | None:
    """The curve's value at ``flops``: linear in log FLOPs between its two neighbouring checkpoints; ``None``
    outside its range (beyond ``FLOPS_TOLERANCE``)."""
    if not points:
        return None
    low, high = points[0][0], points[-1][0]
    if flops < low * (1 - FLOPS_TOLERANCE) or flops > high * (1 + FLOPS_TOLERANCE):
        return None
    import numpy as np

    return float(np.interp(math.log(flops), [math.log(f) for f, _ in points], [v for _, v in points]))  # clamps to the ends


def flops_to_reach(points: list[tuple[float, float]], value: float, higher: bool) -> tuple[float | None, bool]:
    """The FLOPs at which the curve first reaches ``value`` (log-linear between checkpoints) and whether that is
    only an upper bound (its first checkpoint already reaches it); ``(None, False)`` if it never does."""
    better = (lambda v: v >= value) if higher else (lambda v: v <= value)
    if points and better(points[0][1]):
        return points[0][0], True
    for (f0, v0), (f1, v1) in zip(points, points[1:]):
        if better(v1):
            w = (value - v0) / (v1 - v0)
            return math.exp(math.log(f0) + w * (math.log(f1) - math.log(f0))), False
    return None, False


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's goals, per checkpoint of the first series of each pair: its primary metric against the second
    series' at the same training FLOPs, the FLOPs the second needs to reach it (``compute_ratio`` = first's FLOPs /
    second's, > 1: the second gets there with less; ``reach_bounded``: the second's first checkpoint already does, so
    its FLOPs are at most that and the ratio at least this), and its entropy against the data's."""
    metric, higher = PRIMARY[results["data"]]
    data_entropy = (results.get("reference") or {}).get("entropy")
    out = []
    for (method, steps), (other, other_steps) in GOALS:
        mine, theirs = curve(results, method, steps, metric), curve(results, other, other_steps, metric)
        entropy = dict(curve(results, method, steps, "entropy"))
        for flops, value in mine:
            matched = at_flops(theirs, flops)
            reach, bounded = flops_to_reach(theirs, value, higher)
            out.append({"series": (method, steps), "against": (other, other_steps), "metric": metric, "flops": flops, "value": value,
                        "other_at_equal_flops": matched,
                        "gap": None if matched is None else (value / matched if not higher else value - matched),
                        "other_reaches_at": reach, "reach_bounded": bounded, "compute_ratio": None if not reach else flops / reach,
                        "entropy": entropy.get(flops),
                        "entropy_vs_data": None if data_entropy is None or entropy.get(flops) is None
                        else entropy[flops] / data_entropy - 1})
    return out


def goals_table(results: dict[str, Any]) -> str:
    """Markdown: one row per checkpoint of each goal's series (empty when neither series was scored); ``results["goals"]``
    when ``main`` has computed them."""
    rows = results["goals"] if "goals" in results else goals(results)
    if not rows:
        return ""
    metric, higher = PRIMARY[results["data"]]
    gap = "ratio (this / other)" if not higher else "difference (this − other)"
    lines = ["", f"**Goals at equal training FLOPs** ({metric}, {'higher' if higher else 'lower'} is better). The other series "
             "is read at the same FLOPs, linear in log FLOPs between its checkpoints ('-': outside its range); 'reaches it "
             "at' is the FLOPs where the other series first matches this value ('≤': its first checkpoint already does, "
             "'-': never within its range) and 'compute ratio' this FLOPs / that (> 1: the other gets there with less).", "",
             f"| this | against | training FLOPs | {metric} | other at equal FLOPs | {gap} | other reaches it at | compute ratio "
             "| entropy vs data |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bound = ("≤ ", "≥ ") if r["reach_bounded"] else ("", "")
        reach = "-" if r["other_reaches_at"] is None else f"{bound[0]}{r['other_reaches_at']:.3e}"
        ratio = "-" if r["compute_ratio"] is None else f"{bound[1]}{fmt(r['compute_ratio'], 3)}"
        vs = "-" if r["entropy_vs_data"] is None else f"{100 * r['entropy_vs_data']:+.1f} %"
        lines.append(f"| {LABEL[r['series'][0]]} {r['series'][1]} | {LABEL[r['against'][0]]} {r['against'][1]} | {r['flops']:.3e} "
                     f"| {fmt(r['value'])} | {fmt(r['other_at_equal_flops'])} | {fmt(r['gap'], 3)} | {reach} "
                     f"| {ratio} | {vs} |")
    return "\n".join(lines) + "\n"


# --- output ----------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """Markdown: the command, the FLOPs formula, then one row per (series, checkpoint) and the data's row."""
    from flowzoo.benchmark import judge_label

    metrics = [m for m, _ in METRICS[results["data"]]]
    lines = ["```", results["command"], "```", "",
             "Training FLOPs estimated as 6·N·B·L·k (N parameters, B·L tokens a step, k steps; 8·N·B·L·k with "
             "self-conditioning); a flow map adds its distillation, (6·N_student + 2·N_teacher)·B·L·d (4·N_teacher with "
             "teacher_self_condition), to its teacher "
             "checkpoint's" + ("; a dmd fine-tune adds d' steps of that plus ((6 + 2(c−1))·N_student + (4 + 6c)·N_teacher)·G·L "
                               "(G one-step samples a step, c critic steps; (4 + 12c)·N_teacher·G·L more with its GAN term; the generator's 6 "
                               "is 6 + 2(k̄−1) + 2k̄(c−1) + 6r with a multi-step generator of mean k̄ steps and the paired regression on a "
                               "fraction r of its samples) to its map's"
                               if any(p.get("dmd_steps") for p in results["points"]) else "") + ". "
             f"{results['num_samples']} samples per row, seed {results['seed']}; judge: "
             f"{judge_label(results['judge'], results.get('judge_digest'), '-')}.",
             "Conventions (docs/benchmark.md): `flowzoo benchmark`'s defaults, GenPPL `judge_text: decode`, `judge_eos: all`; MDLM's "
             "`ancestral` stops at MDLM time τ = the path's eps (1e-3), not MDLM's code's 1e-5.", "",
             "| series | train step | distill steps | training FLOPs | NFE | " + " | ".join(metrics) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(metrics)]
    for p in sorted(results["points"], key=lambda p: (p["series"], p["flops"])):
        distill = fmt(p["distill_steps"]) + (f" + {p['dmd_steps']} dmd" if p.get("dmd_steps") else "")
        cells = [p["series"], str(p["train_step"]), distill, f"{p['flops']:.3e}", fmt(p["nfe"])]
        lines.append("| " + " | ".join(cells + [fmt(p["metrics"].get(m)) for m in metrics]) + " |")
    if results.get("reference"):
        lines.append("| data (validation) | | | | | " + " | ".join(fmt(results["reference"].get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n" + goals_table(results)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Each metric against training FLOPs (log scale), one line per series; the data's value dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = METRICS[results["data"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    series: dict[str, list[dict]] = {}
    for p in results["points"]:
        series.setdefault(p["series"], []).append(p)
    for ax, (metric, higher) in zip(axes[0], metrics):
        for name, group in sorted(series.items()):
            group = sorted(group, key=lambda p: p["flops"])
            ys = [p["metrics"].get(metric) for p in group]
            ax.plot([p["flops"] for p in group], [float("nan") if y is None else y for y in ys], marker="o", label=name)
        value = (results.get("reference") or {}).get(metric)
        if value is not None:
            ax.axhline(value, color="gray", linestyle="--", linewidth=1, label="data")
        ax.set_xscale("log")
        if metric == "gen_ppl":
            ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (estimated)")
        ax.set_ylabel(f"{metric} ({'closer to data' if higher is None else 'higher' if higher else 'lower'} is better)")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"learning curves on {results['data']} ({results['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main ------------------------------------------------------------------------------------------


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA, default="shakespeare")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--budget", type=int, help="training steps of flow, MDLM and AR (default 15000; with --tiny 4)")
    parser.add_argument("--every", type=int, default=1500, help="a checkpoint every this many steps")
    parser.add_argument("--distill-steps", type=int, default=500, help="training steps of each flow map")
    parser.add_argument("--dmd-steps", type=int, default=1200, help="training steps of each flow map's dmd fine-tune (flow_map_dmd)")
    parser.add_argument("--distill-at", help="comma-separated flow checkpoint steps to distil from (default: every one)")
    parser.add_argument("--score-at", help="comma-separated checkpoint steps of flow, MDLM and AR to score (default: every one)")
    parser.add_argument("--flow-steps", type=int, nargs="+", default=[128], help="Euler steps of the flow")
    parser.add_argument("--euler-grid", choices=("linspace", "uniform"), default=EULER_DEFAULTS["grid"],
                        help="the Euler sampler's time grid")
    parser.add_argument("--euler-gamma", type=float, default=EULER_DEFAULTS["gamma"],
                        help="the Euler sampler's churn: share of fresh noise after each step, in [0, 1] (0: the ODE)")
    parser.add_argument("--map-steps", type=int, nargs="+", default=[1, 4], help="flow-map steps")
    parser.add_argument("--mdlm-steps", type=int, nargs="+", default=[8, 128], help="MDLM ancestral steps")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="sampling batch size")
    parser.add_argument("--val-batches", type=int, default=2, help="validation batches of each checkpoint's objective (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--judge", help="GenPPL judge (flowzoo AR checkpoint or transformers name); default on text: train one")
    parser.add_argument("--judge-steps", type=int, help="training steps of a judge trained here (default: its config's)")
    parser.add_argument("--train-flag", action="append", default=[], metavar="METHOD:FLAG",
                        help=f"one more `flowzoo fit` flag for METHOD ({', '.join(FLAG_TARGETS)}); repeatable")
    parser.add_argument("--data-flag", action="append", default=[], metavar="FLAG",
                        help="a data flag for every model and the judge, e.g. --data-flag=--data.init_args.tokenizer=bpe")
    parser.add_argument("--runs", default="runs/curves", help="where the models, checkpoints and scores go")
    parser.add_argument("--extend", metavar="RUNS", help="continue flow, MDLM and AR from their last checkpoints in this "
                        "--runs folder on the longer --budget schedule (a warm restart), its earlier checkpoints linked in")
    parser.add_argument("--output", help="folder for curves.{md,json,png} (default: <runs>/<data>)")
    parser.add_argument("--device", default="cpu", help="sampling device: cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few steps, a small grid: an end-to-end check in seconds")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.train_flags = study.parse_train_flags(parser, args.train_flag, FLAG_TARGETS)
    args.data_flags = args.data_flag
    if any(not f.startswith("--data.") for f in args.data_flags):
        parser.error(f"--data-flag expects --data.… flags, got {args.data_flags}")
    if args.tiny:  # a --budget given beside --tiny is kept (a tiny run extended with --extend)
        args.budget, args.every, args.distill_steps, args.dmd_steps = 4 if args.budget is None else args.budget, 2, 2, 2
        args.flow_steps, args.map_steps, args.mdlm_steps = [4], [1, 2], [2, 4]
        args.num_samples, args.batch_size, args.val_batches = 8, 4, 1
    args.budget = 15000 if args.budget is None else args.budget
    if not 0.0 <= args.euler_gamma <= 1.0:
        parser.error(f"--euler-gamma must lie in [0, 1], got {args.euler_gamma}")
    if min(args.budget, args.every, args.distill_steps, args.dmd_steps) < 1 or args.every > args.budget:
        parser.error("--budget, --every, --distill-steps and --dmd-steps must be positive, --every at most --budget")
    for flag in ("distill_at", "score_at"):
        value = getattr(args, flag)
        try:
            setattr(args, flag, None if not value else sorted({int(v) for v in value.split(",")}))
        except ValueError:
            parser.error(f"--{flag.replace('_', '-')} expects comma-separated steps (2500,5000), got {value!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    runs = (ROOT / args.runs).resolve() / args.data
    output = Path(args.output).resolve() if args.output else runs
    output.mkdir(parents=True, exist_ok=True)
    judge = train_judge(runs, args) if args.data == "shakespeare" else (Path(args.judge) if args.judge else None)

    extend = (ROOT / args.extend).resolve() / args.data if args.extend else None
    if extend is not None and extend == runs:
        raise SystemExit(f"--extend names the --runs folder itself ({args.runs}): extend into another one")
    trained = {}  # method -> {step: checkpoint}
    for method in TRAINED:
        if method in args.methods or (method == "flow" and {"flow_map", "flow_map_dmd"} & set(args.methods)):
            trained[method] = train(method, runs / method, args.budget, args.every, args, extend=extend / method if extend else None)
    maps, tuned = {}, {}  # teacher step -> {step: checkpoint} of its map, and of that map's dmd fine-tune
    if {"flow_map", "flow_map_dmd"} & set(args.methods):
        chosen = args.distill_at or list(trained["flow"])
        missing = sorted(set(chosen) - set(trained["flow"]))
        if missing:
            raise SystemExit(f"--distill-at {missing}: no flow checkpoint at those steps (there are {sorted(trained['flow'])})")
        for k in chosen:
            maps[k] = train("flow_map", runs / f"flow_map_from_{k}", args.distill_steps, args.distill_steps, args, teacher=trained["flow"][k])
            if "flow_map_dmd" in args.methods:
                tuned[k] = train("flow_map_dmd", runs / f"flow_map_dmd_from_{k}", args.dmd_steps, args.dmd_steps, args,
                                 teacher=trained["flow"][k], student=maps[k][args.distill_steps])

    scores, flow_flops, results_points = score_folder(runs, args, judge), {}, []
    for method, found in trained.items():
        missing = sorted(set(args.score_at or ()) - set(found))
        if missing and method in args.methods:
            raise SystemExit(f"--score-at {missing}: no {method} checkpoint at those steps (there are {sorted(found)})")
        for step, ckpt in found.items():
            facts = model_facts(ckpt)
            flops = training_flops(facts["parameters"], tokens_per_step(facts["config"]), step, self_conditioned(facts["config"]))
            if method == "flow":
                flow_flops[step] = (flops, facts["parameters"])
            if method in args.methods and (args.score_at is None or step in args.score_at):
                name = score_name(method, step, args)
                entry = {"name": name, "checkpoint": str(ckpt), "samplers": sampler_entries(method, args)}
                results_points += points(method, step, score(entry, scores / f"{name}.json", args, judge), flops, facts["parameters"])
    for k, found in maps.items():
        d = max(found)
        facts = model_facts(found[d])
        teacher_flops, teacher_parameters = flow_flops[k]
        passes = 2 if teacher_self_conditioned(facts["config"]) else 1
        flops = teacher_flops + distillation_flops(facts["parameters"], teacher_parameters, tokens_per_step(facts["config"]), d, passes)
        if "flow_map" in args.methods:
            name = f"flow_map@{k}+{d}"
            entry = {"name": name, "checkpoint": str(found[d]), "samplers": sampler_entries("flow_map", args)}
            results_points += points("flow_map", k, score(entry, scores / f"{name}.json", args, judge), flops, facts["parameters"], distill=d)
        if k in tuned:
            m = max(tuned[k])
            name, tuned_facts = f"flow_map_dmd@{k}+{d}+{m}", model_facts(tuned[k][m])
            setting = dmd_setting(tuned_facts["config"])
            tuned_flops = flops + dmd_flops(tuned_facts["parameters"], teacher_parameters, tokens_per_step(tuned_facts["config"]),
                                            setting.generated * int(tuned_facts["config"]["data"]["init_args"]["seq_len"]), m,
                                            setting.critic_steps, 2 if teacher_self_conditioned(tuned_facts["config"]) else 1,
                                            setting.gan, setting.mean_generator_steps, setting.regressed_fraction)
            entry = {"name": name, "checkpoint": str(tuned[k][m]), "samplers": sampler_entries("flow_map_dmd", args)}
            results_points += points("flow_map_dmd", k, score(entry, scores / f"{name}.json", args, judge), tuned_flops,
                                     tuned_facts["parameters"], distill=d, dmd=m)
    first = next(iter(next(iter(trained.values())).values()))
    reference = reference_metrics(first, scores / "data.json", args, judge)

    from flowzoo.devices import resolve_device
    from flowzoo.judges import weights_digest

    results = {"command": "python benchmarks/learning_curves.py " + " ".join(argv), "data": args.data, "judge": shown_path(judge) if judge else None,
               "judge_digest": weights_digest(judge) if judge else None,
               "num_samples": args.num_samples, "seed": args.seed, "device": str(resolve_device(args.device, "--device")),
               "reference": reference, "points": results_points}
    results["goals"] = goals(results)
    (output / "curves.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (output / "curves.md").write_text(table(results))
    plot(results, output / "curves.png")
    print((output / "curves.md").read_text())
    print(f"wrote {output / 'curves.md'}, curves.json and curves.png")
    return results


if __name__ == "__main__":
    main()
