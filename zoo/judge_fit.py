"""``flowzoo judge fit``: the ``flowzoo fit`` arguments that train a flowzoo AR judge (see :mod:`flowzoo.judges`).

The command only builds the argument list: ``flowzoo.cli`` runs it with its Lightning entry point, so this
module does not import the CLI (no cli <-> judge import cycle).
"""

from __future__ import annotations

from typing import Sequence

from flowzoo.judges import JudgeError

AR_FLAGS = ("--model.path=autoregressive", "--model.objective=ar", "--model.sampler=ar", "--model.backbone.init_args.causal=true")
JUDGE_CONFIGS = {"markov": "configs/judge_markov.yaml", "shakespeare": "configs/judge_shakespeare.yaml"}
SAVE_CALLBACK = "flowzoo.checkpoints.callback.SavePretrained"
USAGE = (
    "usage: flowzoo judge fit --config configs/judge_shakespeare.yaml [--trainer.max_steps=N ...]\n\n"
    "Trains an AR judge (ar objective and sampler, causal backbone) with flowzoo fit and writes it with\n"
    "save_pretrained to <trainer.default_root_dir>/pretrained; score samples with it through\n"
    "`flowzoo benchmark` (judge: <that directory>)."
)


def preset_fit_args(argv: Sequence[str], flags: Sequence[str], command: str, example: str) -> list[str]:
    """``flowzoo fit`` arguments of a preset command (``flowzoo COMMAND fit``): the config file(s), then the preset's
    ``flags``, then a callback writing ``save_pretrained`` to ``<default_root_dir>/pretrained`` at the end of
    training, then the user's own flags (which override all of these)."""
    configs, rest, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            configs += argv[i : i + 2]
            i += 2
            continue
        (configs if argv[i].startswith("--config=") else rest).append(argv[i])
        i += 1
    if not configs:
        raise JudgeError(f"flowzoo {command} fit needs --config (e.g. {example})")
    return ["fit", *configs, *flags, f"--trainer.callbacks+={SAVE_CALLBACK}", *rest]


def preset_command(argv: Sequence[str], command: str, usage: str, build) -> list[str] | None:
    """``flowzoo COMMAND ARGS`` -> the ``flowzoo`` arguments to run (``build(ARGS after fit)``), or None after
    printing ``usage``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return None
    if argv[0] != "fit":
        raise JudgeError(f"unknown {command} command {argv[0]!r}; the {command} command is: flowzoo {command} fit --config FILE")
    return build(argv[1:])


def judge_fit_args(argv: Sequence[str]) -> list[str]:
    """``flowzoo fit`` arguments for a judge: the config file(s), then the AR objective and sampler, a causal
    backbone and a callback writing ``save_pretrained`` to ``<default_root_dir>/pretrained`` at the end of
    training, then the user's own flags (which override all of these)."""
    return preset_fit_args(argv, AR_FLAGS, "judge", JUDGE_CONFIGS["shakespeare"])


def judge_command(argv: Sequence[str]) -> list[str] | None:
    """``flowzoo judge ARGS`` -> the ``flowzoo`` arguments to run (``fit ...``), or None after printing the usage."""
    return preset_command(argv, "judge", USAGE, judge_fit_args)
