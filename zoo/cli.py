"""The ``flowzoo`` command: LightningCLI (fit/validate/test/predict) plus ``sample``, ``list``, ``benchmark``,
``publish``, ``judge``, ``classifier`` and ``import``; ``flowzoo --help`` lists them all (:data:`COMMANDS`).

Components are chosen by short registry names, ``--model.path=linear``; the names are
expanded to class paths for jsonargparse before parsing, so ``--model.sampler.steps=64``
and ``--print_config`` work as in any LightningCLI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from flowzoo import registry
from flowzoo.errors import FlowzooError, SamplingWarning
from flowzoo.outputs import check_output_dir, check_output_file

# command-line keys whose value is a registered component name
_KEY_KIND = {f"--model.{kind}": kind for kind in ("backbone", "path", "head", "objective", "sampler")}
_KEY_KIND["--data"] = "data"
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def expand_short_names(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--model.head=gaussian`` (or ``--model.head gaussian``) to the registered class path."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        key, sep, value = arg.partition("=")
        if key in _KEY_KIND and not sep and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
            sep = "="
        if key in _KEY_KIND and sep and not value.startswith(("{", "[")) and "/" not in value and not value.endswith((".yaml", ".yml", ".json")):
            cls = registry.get(_KEY_KIND[key], value)  # raises with the valid names listed
            arg = f"{key}={registry.class_path(cls)}"
        out.append(arg)
        i += 1
    return out


def _objective_named(argv: Sequence[str]) -> str | None:
    """The objective ``argv`` chooses: its last ``--model.objective=NAME``, else the one a ``--config`` file names."""
    import yaml

    argv, found = list(argv), None
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if not sep and i + 1 < len(argv):
            value = argv[i + 1]
        if key == "--model.objective" and not value.startswith(("{", "[")):
            found = value
        elif key == "--config" and found is None and Path(value).is_file():
            try:
                objective = ((yaml.safe_load(Path(value).read_text()) or {}).get("model") or {}).get("objective")
            except (yaml.YAMLError, AttributeError):
                continue
            objective = objective.get("class_path") if isinstance(objective, dict) else objective
            found = objective if isinstance(objective, str) else found
    return found


def nest_regrouped_flags(argv: Sequence[str]) -> list[str]:
    """Flags of an objective's arguments in the flat form of earlier versions, rewritten to where the objective now
    takes them: ``--model.objective.init_args.boundary=0.25`` -> ``--model.objective.init_args.flow_map.boundary=0.25``
    for the flow-map objectives (their ``upgrade_args`` says which keys moved where; flow_matching's own
    ``time_sampling`` stays)."""
    name = _objective_named(argv)
    try:
        upgrade = getattr(registry.get("objective", name), "upgrade_args", None) if name else None
    except FlowzooError:
        upgrade = None
    if upgrade is None:
        return list(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        for prefix in ("--model.objective.init_args.", "--model.objective."):
            field = key[len(prefix):] if key.startswith(prefix) else ""
            if sep and field and "." not in field:
                moved = upgrade({field: None})
                if field not in moved:  # regrouped: {group: {field: ...}}
                    group = next(k for k, v in moved.items() if isinstance(v, dict) and field in v)
                    arg = f"--model.objective.init_args.{group}.{field}={value}"
                break
        out.append(arg)
    return out


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``flowzoo.samplers.EulerSampler`` and ``flowzoo.samplers.euler.EulerSampler`` do)."""
    if a == b:
        return True
    from jsonargparse._util import import_object  # the resolver jsonargparse itself uses for class_path

    try:
        return import_object(a) is import_object(b)
    except Exception:
        return False


@contextlib.contextmanager
def switched_components_start_fresh():
    """While parsing, a component whose class changes (``--model.sampler=flow_map`` after a config with ``euler``,
    ``--data=shakespeare`` after markov) starts from the new class's defaults.

    jsonargparse's own rule keeps every argument of the previous class that the new one also accepts (the flow map
    sampler would inherit euler's ``steps: 128``, Shakespeare markov's ``seq_len``); its
    ``discard_init_args_on_class_path_change`` is the one place that rule lives, so it is replaced here: on a class
    change every previous argument is dropped. Arguments given after the switch still apply, and a repeated name
    (the same class) keeps them.
    """
    from jsonargparse import _typehints

    original = _typehints.discard_init_args_on_class_path_change

    def discard_all(parser_or_action, prev_val, value):
        if not prev_val or "init_args" not in prev_val or _same_class(prev_val["class_path"], value["class_path"]):
            return original(parser_or_action, prev_val, value)
        prev_val = _typehints.subclass_spec_as_namespace(prev_val)
        for key in list(vars(prev_val.init_args)):  # top-level names; nested ones go with them
            prev_val.init_args.pop(key)

    _typehints.discard_init_args_on_class_path_change = discard_all
    try:
        yield
    finally:
        _typehints.discard_init_args_on_class_path_change = original


@contextlib.contextmanager
def one_line_option_errors(argv: Sequence[str]):
    """jsonargparse's refusal of an option (raised, not printed with the usage: ``exit_on_error=False``) as one line."""
    try:
        yield
    except argparse.ArgumentError as err:
        from flowzoo.option_errors import OptionError, one_line

        command = next((a for a in argv if a in LIGHTNING_COMMANDS), "fit")
        raise OptionError(one_line(str(err), command)) from None


def place_checkpoints(trainer) -> None:
    """Checkpoint callbacks without a ``dirpath`` write to ``<default_root_dir>/checkpoints``.

    ``default_root_dir`` is the run's own folder here (flowzoo.runs: ``runs/x/version_N``, with ``runs/x/checkpoints``
    pointing at the newest run's). Every one of them keeps a ``last.ckpt`` (the final step: flowzoo.callbacks.EndOfRun) unless ``save_last: false``
    says otherwise, so ``--ckpt_path last`` and ``<run>/checkpoints/last.ckpt`` exist for every run. Those whose
    ``save_last`` is turned on here overwrite a file of the same name (``last.ckpt`` above all) rather than version
    it: with Lightning's version counter, two of them in one folder, or one resumed beside a ``last.ckpt`` it did not
    write (another cadence), write ``last-v1.ckpt`` and leave ``last.ckpt`` behind at an older step.
    """
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is None:
            callback.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        if getattr(callback, "save_last", False) is None:
            callback.save_last = True
            callback._enable_version_counter = False  # (ModelCheckpoint's enable_version_counter, kept privately)


def ckpt_path_arg(argv: Sequence[str]) -> str | None:
    """The value of the last ``--ckpt_path=X`` (or ``--ckpt_path X``) in ``argv``, else None."""
    argv, found = list(argv), None
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if key == "--ckpt_path":
            found = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
    return found


def check_ckpt_path(argv: Sequence[str]) -> None:
    """Refuse ``--ckpt_path`` naming a missing local file (or a folder) before any model or data is built."""
    from flowzoo.ckpt_path import check_file, local_file

    value = ckpt_path_arg(argv)
    file = local_file(value)  # None for Lightning's own choices and remote paths
    if file is not None:
        check_file(file, value)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16, AMX, Arm BF16); True where it cannot be told."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_precision(precision: Any, accelerator: Any) -> Any:
    """``precision``, or "32-true" for bf16 training on a CPU without bf16 instructions, where autocast emulates
    it (measured on an AVX2 AMD EPYC: 4.96 s per step against 0.41 s in fp32, DiT width 192, batch 64 x 32).
    FLOWZOO_CPU_BF16=1 keeps bf16 anyway."""
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if "bf16" not in str(precision) or not on_cpu or cpu_has_bf16() or os.environ.get("FLOWZOO_CPU_BF16") == "1":
        return precision
    print(
        f"flowzoo: this CPU has no bf16 instructions, so precision={precision} would be emulated (about 12x slower "
        "than fp32); training in 32-true instead (set FLOWZOO_CPU_BF16=1 to keep bf16)",
        file=sys.stderr,
    )
    return "32-true"


try:
    from lightning.pytorch.cli import LightningCLI as _LightningCLI
except ImportError:  # pragma: no cover
    _LightningCLI = object  # type: ignore[misc,assignment]


class FlowzooCLI(_LightningCLI):
    """LightningCLI with flowzoo's defaults, run folders (flowzoo.runs) and run callbacks (flowzoo.callbacks).
    At module level, not inside a function: ``ddp_spawn`` pickles it."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        defaults = {f"model.{kind}": {"class_path": registry.class_path(registry.get(kind, name))} for kind, name in _MODEL_DEFAULTS.items()}
        defaults["data"] = {"class_path": registry.class_path(registry.get("data", "markov"))}
        parser.set_defaults(defaults)

    def parse_arguments(self, parser, args) -> None:
        """Parse, with a ``--ckpt_path`` file read first (a bad file is refused here, in one line, before Lightning
        reads it); for validate/test its model is the default the command line's ``--model.*`` settings apply over."""
        from flowzoo import ckpt_path

        argv = list(sys.argv[1:] if args is None else args)
        self.ckpt_file = self.ckpt_model = None
        self.read_ckpt_path(next((a for a in argv if a in LIGHTNING_COMMANDS), None), ckpt_path.local_file(ckpt_path_arg(argv)))
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        named = ckpt_path.local_file(self.config[subcommand].get("ckpt_path")) if subcommand else None
        if named != self.ckpt_file and self.read_ckpt_path(subcommand, named):  # named by a --config file
            super().parse_arguments(parser, args)
        if subcommand in ckpt_path.EVALUATION_COMMANDS and self.ckpt_model is not None:
            ckpt_path.refuse_conflicts(self.config[subcommand]["model"], self.ckpt_model, self.ckpt_file)

    def read_ckpt_path(self, subcommand: str | None, file: Path | None) -> bool:
        """Read ``file`` (the checkpoint of ``--ckpt_path``) and make its model the parser's default: for validate/test
        the whole model, for fit its settings (lr, warmup, num_val_samples, ...; the architecture is the command
        line's and must match). True when the defaults changed (a parse before this one must be repeated)."""
        from flowzoo import ckpt_path

        self.ckpt_file, self.ckpt_model = file, ckpt_path.read(file) if file is not None else None
        if subcommand not in self._subcommand_parsers or self.ckpt_model is None:
            return False
        defaults = ckpt_path.model_defaults(self.ckpt_model, components=subcommand in ckpt_path.EVALUATION_COMMANDS)
        self._subcommand_parsers[subcommand].set_defaults(defaults)
        return True

    def _parse_ckpt_path(self) -> None:
        """Lightning's own reading of ``--ckpt_path`` puts the checkpoint's hyperparameters over the whole parsed
        config, so a flag such as ``--model.num_val_samples`` was silently replaced; here they are the defaults under
        the command line instead (:meth:`read_ckpt_path`), so Lightning's reading is skipped."""
        if self.ckpt_model is None:
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        trainer["precision"] = cpu_precision(trainer.get("precision"), trainer.get("accelerator"))
        if self.subcommand == "fit" or trainer.get("logger") is not False:  # validate/test write only their logs there
            check_output_dir(trainer.get("default_root_dir") or os.getcwd(), "--trainer.default_root_dir")
        if self.subcommand == "fit":
            prepare_run(trainer, config.get("ckpt_path"))

    def before_fit(self) -> None:
        from flowzoo import ckpt_path
        from flowzoo.callbacks import add_run_callbacks

        if self.trainer.is_global_zero:  # once the model and data built: a refused input prints its one line only
            print(f"flowzoo: run folder {self.trainer.default_root_dir}", file=sys.stderr)
        place_checkpoints(self.trainer)
        add_run_callbacks(self.trainer)
        use_step_progress_bar(self.trainer)
        if self.ckpt_model is not None:
            ckpt_path.check_resumable(self.model, self.ckpt_model, self.ckpt_file)
            self.ckpt_model = None  # Lightning restores the run from the file; no second copy kept

    def before_validate(self) -> None:  # built over the checkpoint's own model: no architecture flags needed
        from flowzoo import ckpt_path

        if self.ckpt_model is not None:
            self.model = ckpt_path.evaluation_model(self.model, self.ckpt_model, self.ckpt_file)
            self.ckpt_model = None  # Lightning loads the file's weights into the model; no second copy kept
        elif self.config[self.subcommand].get("ckpt_path") in (None, "", "null", "None"):
            print(f"flowzoo: warning: {self.subcommand} without --ckpt_path evaluates a freshly initialised model; "
                  "pass --ckpt_path runs/<name>/checkpoints/last.ckpt to evaluate a trained one", file=sys.stderr)

    before_test = before_predict = before_validate


def prepare_run(trainer: dict, ckpt_path: str | None) -> None:
    """Point ``default_root_dir`` at this fit's own run folder (flowzoo.runs) and, for the default logger, log
    into that folder; the processes Lightning's ``ddp`` launcher starts inherit the folder (FLOWZOO_RUN_DIR)."""
    from flowzoo.runs import RUN_DIR_ENV, choose_run_dir

    run = choose_run_dir(trainer.get("default_root_dir"), ckpt_path)
    os.environ[RUN_DIR_ENV] = str(run)
    trainer["default_root_dir"] = str(run)
    if trainer.get("logger") in (None, True):
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "", "version": ""}}


def use_step_progress_bar(trainer) -> None:
    """Replace Lightning's rich progress bar, which reads "Epoch 0/-2" on step-based runs, by one counting steps."""
    from lightning.pytorch.callbacks import RichProgressBar

    from flowzoo.progress import StepProgressBar

    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar()


_QUIET = ("Tip:", "litlogger", "litmodels", "GPU available:", "TPU available:", "HPU available:", "Seed set to")


class _QuietFilter:
    """Drops Lightning's advertising tips and the hardware and seed notices it prints on every run."""

    def filter(self, record) -> bool:
        text = record.getMessage()
        return not any(q in text for q in _QUIET)


def quiet_lightning() -> None:
    """Silence Lightning's tips, hardware lines and warnings that are not about this run's settings."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietFilter) for f in logger.filters):
            logger.addFilter(_QuietFilter())
        for handler in logger.handlers:
            if not any(isinstance(f, _QuietFilter) for f in handler.filters):
                handler.addFilter(_QuietFilter())
    for message in (r"Experiment logs directory .* exists and is not empty", r"Checkpoint directory .* exists and is not empty",
                    r".*does not have many workers which may be a bottleneck", r".*isinstance\(treespec, LeafSpec\)",
                    r"The number of training batches .* is smaller than the logging interval", r"No seed found",
                    r"LightningCLI's args parameter is intended", r"Precision .* is not supported by the model summary",
                    # flowzoo's data modules resume mid-epoch (flowzoo.data.sampler), from the loop's restored position
                    r"You're resuming from a checkpoint that ended before the epoch ended",
                    # validate/test with a checkpoint of `fit`: its run callbacks (flowzoo.callbacks) only matter to fit
                    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided"
                    r".*\['(ResumeState|EndOfRun)'(, '(ResumeState|EndOfRun)')?\]",
                    # every run has its own folder (flowzoo.runs): a checkpoint of another run was written elsewhere
                    r"The dirpath has changed from .* therefore `best_model_score`"):
        warnings.filterwarnings("ignore", message=message)


def lightning_main(argv: Sequence[str]) -> None:
    from flowzoo.data.base import TokenDataModule
    from flowzoo.module import FlowLM
    from flowzoo.runs import RUN_DIR_ENV, abandon_fresh_run, forget_fresh_run

    registry.load_all()
    check_ckpt_path(argv)
    if argv and argv[0] == "predict":
        raise FlowzooError("flowzoo predict writes nothing; sample a trained model with `flowzoo sample --checkpoint "
                           "runs/<name>/checkpoints/last.ckpt --output samples.txt` (see `flowzoo sample --help`)")
    args = nest_regrouped_flags(expand_short_names(argv))
    quiet_lightning()
    # Lightning's `ddp` launcher starts the other processes by re-running this command line (sys.argv): give it ours.
    program, sys.argv = sys.argv, [sys.argv[0], *argv]
    inherited = RUN_DIR_ENV in os.environ
    forget_fresh_run()
    try:
        with switched_components_start_fresh(), one_line_option_errors(argv):
            FlowzooCLI(
                FlowLM,
                TokenDataModule,
                subclass_mode_data=True,
                args=args,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"log_every_n_steps": 10},
                parser_kwargs={"exit_on_error": False, **{c: {"exit_on_error": False} for c in LIGHTNING_COMMANDS}},
            )
    except BaseException:
        abandon_fresh_run()  # refused before training started: no empty version_N, latest stays on the last real run
        raise
    finally:
        forget_fresh_run()
        sys.argv = program
        if not inherited:
            os.environ.pop(RUN_DIR_ENV, None)


_MODEL_DEFAULTS = {"backbone": "dit", "path": "linear", "head": "categorical", "objective": "flow_matching", "sampler": "euler"}


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> {KEY: yaml(VALUE)}; a string without '=' is refused."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


def sample_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="flowzoo sample", description="Sample text from a trained flowzoo model.")
    parser.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help="Lightning .ckpt, save_pretrained directory, or Hub repo id (org/name)")
    parser.add_argument("--sampler", help="registered sampler name (default: the model's own)")
    parser.add_argument("--steps", type=int, help="sampler steps (NFE for euler and flow_map)")
    parser.add_argument("--decode", choices=("argmax", "sample"), help="decoding of the final prediction")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="another option of the sampler, value in YAML (repeatable), e.g. gamma=1.0 or times=[0,0.3,1]")
    parser.add_argument("--reward", help="a registered reward (flowzoo list) scored beside the metrics; with --option "
                        "guidance=ETA or particles=K the sampler (flow_map, euler) steers towards it")
    parser.add_argument("--reward-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an argument of the reward, value in YAML (repeatable), e.g. tokens=[3,5] or words=[New]")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the training length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=8, help="how many samples to print (0: none)")
    parser.add_argument("--output", help="write all samples, one per line, to this file")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--prompt", help="complete this text (a prefix); generated spans are shown as {{...}}")
    parser.add_argument("--infill", help='fill the holes of this text, each marked "[...]", e.g. "To be, or [...] to be"')
    parser.add_argument("--hole-length", type=int, help="generated tokens per [...] hole of --infill (default 8)")
    parser.add_argument("--hold", choices=("clean", "path"),
                        help="with --prompt or --infill, flow / flow-map samplers: known positions at their clean one-hot (default) or on the path x_t")
    args = parser.parse_args(argv)
    refuse_ignored_sample_flags(args)
    if args.output:
        check_output_file(args.output, "--output")

    from flowzoo.devices import resolve_device
    from flowzoo.sampling import sample_from_checkpoint

    device = resolve_device(args.device, "--device")
    overrides = {k: v for k, v in (("steps", args.steps), ("decode", args.decode), ("temperature", args.temperature)) if v is not None}
    overrides.update(parse_options(args.option))
    if args.reward_option and not args.reward:
        raise FlowzooError("--reward-option needs --reward NAME")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SamplingWarning)
        result = sample_from_checkpoint(args.checkpoint, args.sampler, overrides, args.num_samples, args.length, args.seed, device=device,
                                        reward=args.reward, reward_options=parse_options(args.reward_option),
                                        prompt=args.prompt, infill=args.infill, hole_length=args.hole_length or 8, hold=args.hold or "clean")
    for warning in caught:
        if issubclass(warning.category, SamplingWarning):
            print(f"flowzoo: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    for text in result["texts"][: args.show]:
        print(text)
        print("-" * 40)
    if args.output:
        from flowzoo.sample_io import write_samples

        write_samples(args.output, result["texts"])  # exactly one sample per line: newlines inside written as \n
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}, indent=2))


def refuse_ignored_sample_flags(args: argparse.Namespace) -> None:
    """``flowzoo sample`` flags that would have no effect are refused, not ignored: ``--hole-length`` without
    ``--infill``, ``--hold`` without a prompt or holes, a negative ``--show``."""
    if args.hole_length is not None and not args.infill:
        raise FlowzooError("--hole-length sets the length of --infill's [...] holes; add --infill TEXT or drop it")
    if args.hold is not None and not (args.prompt or args.infill):
        raise FlowzooError("--hold says where a prompt's known positions are held; add --prompt or --infill, or drop it")
    if args.show < 0:
        raise FlowzooError(f"--show is how many samples to print, 0 or more; got {args.show}")


def publish_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="flowzoo publish",
        description="Upload a trained flowzoo model to the Hugging Face Hub: model.safetensors, config.json, tokenizer files, README.md model card.",
    )
    parser.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help="Lightning .ckpt, save_pretrained directory, or Hub repo id")
    parser.add_argument("--repo-id", required=True, help="target Hub repo, org/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--branch", help="push to this branch (default: main)")
    parser.add_argument("--commit-message", default="Upload flowzoo model")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    parser.add_argument("--eval-samples", type=int, default=64, help="measure the card's benchmark figures on this many samples of the model's sampler (0: skip)")
    parser.add_argument("--metrics", help="benchmark figures for the card: a flat JSON object, or a `flowzoo benchmark` results.json")
    parser.add_argument("--benchmark-model", help="the model's name in that results.json (default: the one benchmarked from --checkpoint)")
    parser.add_argument("--output-dir", help="only write the folder that would be uploaded here; no upload")
    args = parser.parse_args(argv)
    if args.output_dir:
        check_output_dir(args.output_dir, "--output-dir")

    from flowzoo.checkpoints.publish import publish

    result = publish(
        args.checkpoint,
        args.repo_id,
        private=args.private,
        branch=args.branch,
        commit_message=args.commit_message,
        token=args.token,
        eval_samples=args.eval_samples,
        metrics_file=args.metrics,
        output_dir=args.output_dir,
        benchmark_model=args.benchmark_model,
    )
    print(json.dumps(result, indent=2))


def import_main(argv: Sequence[str]) -> None:
    """``flowzoo import SOURCE --out DIR``: see flowzoo.checkpoints.importer."""
    parser = argparse.ArgumentParser(
        prog="flowzoo import",
        description="Convert a published MDLM / Duo / FLM checkpoint into a flowzoo save_pretrained folder (safetensors).",
    )
    parser.add_argument("source", help="MDLM Hub repo id or folder (config.json + model.safetensors), a reference-code folder, or a Lightning .ckpt")
    parser.add_argument("--out", required=True, help="the folder to write (config.json, model.safetensors, tokenizer files, README.md)")
    parser.add_argument("--trust-pickle", action="store_true", help="read a Lightning .ckpt (a pickle: only for files you trust)")
    parser.add_argument("--no-ema", action="store_true", help="take a .ckpt's raw weights, not its EMA weights")
    parser.add_argument("--tokenizer", help="tokenizer folder or cached Hub name to save beside the weights (default: the source's, e.g. gpt2)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo id")
    args = parser.parse_args(argv)

    from flowzoo.checkpoints.importer import import_checkpoint

    out = import_checkpoint(args.source, args.out, trust_pickle=args.trust_pickle, use_ema=not args.no_ema,
                            tokenizer=args.tokenizer, revision=args.revision)
    config = json.loads((out / "config.json").read_text())
    print(json.dumps({"out": str(out), "imported": config.get("imported"), "vocab_size": config["vocab_size"],
                      "backbone": config["backbone"], "path": config["path"]["name"], "sampler": config["sampler"]}, indent=2))


def benchmark_main(argv: Sequence[str]) -> None:
    """``flowzoo benchmark --config benchmarks/<name>.yaml``: see flowzoo.benchmark."""
    from flowzoo.benchmark_cli import benchmark_main as run_benchmark

    run_benchmark(list(argv))


def judge_main(argv: Sequence[str]) -> None:
    """``flowzoo judge fit --config configs/judge_<data>.yaml [fit flags]``: ``flowzoo fit`` of an AR judge
    (the arguments from flowzoo.judge_fit)."""
    from flowzoo.judge_fit import judge_command

    args = judge_command(argv)
    if args is not None:
        lightning_main(args)


def classifier_main(argv: Sequence[str]) -> None:
    """``flowzoo classifier fit --config configs/classifier_shakespeare.yaml [fit flags]``: ``flowzoo fit`` of a
    sequence classifier for the ``classifier`` reward (the arguments from flowzoo.classifier_fit)."""
    from flowzoo.classifier_fit import classifier_command

    args = classifier_command(argv)
    if args is not None:
        lightning_main(args)


def list_main(argv: Sequence[str]) -> None:
    """``flowzoo list``: every registered component by kind, with the first line of its docstring."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: flowzoo list\n\nEvery registered component (backbone, path, head, objective, sampler, data) with one line each.")
        return
    print(registry.describe())


# every subcommand with its one line for ``flowzoo --help``; the Lightning ones are run by lightning_main
COMMANDS = {
    "fit": "train a model (LightningCLI: --config FILE, --model.objective=NAME, --trainer.max_steps=N, ...)",
    "validate": "the objective's validation loss and sample metrics of a model (LightningCLI, --ckpt_path)",
    "test": "the same on the test split (LightningCLI, --ckpt_path)",
    "predict": "refused: it writes nothing; `flowzoo sample --output FILE` writes samples",
    "sample": "sample text from a trained model (.ckpt, save_pretrained folder or Hub repo)",
    "list": "list the registered components: backbones, paths, heads, objectives, samplers, data",
    "benchmark": "sample quality, NFE, speed and memory of models and samplers into a table (--config FILE); --rescore DIR: another judge",
    "publish": "upload a trained model to the Hugging Face Hub with its model card",
    "judge": "train an autoregressive judge for generative perplexity (judge fit --config FILE)",
    "classifier": "train a sequence classifier for the classifier reward (classifier fit --config FILE)",
    "import": "convert a published MDLM / Duo / FLM checkpoint into a flowzoo model folder (import SOURCE --out DIR)",
}
_HANDLERS = {"sample": sample_main, "list": list_main, "benchmark": benchmark_main, "publish": publish_main, "judge": judge_main,
             "classifier": classifier_main, "import": import_main}


def usage() -> str:
    """What ``flowzoo``, ``flowzoo -h`` and ``flowzoo --help`` print: every subcommand with one line."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: flowzoo <command> [options]",
        "",
        "flowzoo: flow-map language models beside masked diffusion and autoregressive baselines.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()),
        "",
        "`flowzoo <command> --help` shows the options of one command (fit/validate/test/predict: Lightning's).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2  # no command at all is a usage error, after the help it needs
    try:
        handler = _HANDLERS.get(argv[0])
        if handler is not None:
            handler(argv[1:])
        else:
            lightning_main(argv)
    except (FlowzooError, ValueError) as err:
        message = bad_input_message(err)
        if message is None:
            raise  # not a refusal of ours: a bug, shown with its traceback
        print(f"flowzoo: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exit_, SIGTERMException):  # a SystemExit with no code: would read as success
            return 128 + signal.SIGTERM  # the step it stopped at is saved (flowzoo.callbacks.EndOfRun)
        raise
    return 0


def bad_input_message(err: BaseException) -> str | None:
    """One line for a refusal of bad input, or None for an error that is not one.

    Refusals are FlowzooErrors and ValueErrors raised by flowzoo's own checks (the frame that raised
    them is in a flowzoo module). jsonargparse wraps a component's refusal in a multi-line report
    ("Does not validate against any of the Union subtypes ..."); its ``__cause__`` is the refusal.
    """
    while isinstance(err.__cause__, (FlowzooError, ValueError)):
        err = err.__cause__
    if not isinstance(err, FlowzooError):
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("flowzoo."):
            return None
    return str(err) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
