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


def judge_fit_args(argv: Sequence[str]) -> list[str]:
    """``flowzoo fit`` arguments for a judge: the config file(s), then the AR objective and sampler, a causal
    backbone and a callback writing ``save_pretrained`` to ``<default_root_dir>/pretrained`` at the end of
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
        raise JudgeError(f"flowzoo judge fit needs --config (e.g. {JUDGE_CONFIGS['shakespeare']})")
    return ["fit", *configs, *AR_FLAGS, f"--trainer.callbacks+={SAVE_CALLBACK}", *rest]


def judge_command(argv: Sequence[str]) -> list[str] | None:
    """``flowzoo judge ARGS`` -> the ``flowzoo`` arguments to run (``fit ...``), or None after printing the usage."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if argv[0] != "fit":
        raise JudgeError(f"unknown judge command {argv[0]!r}; the judge command is: flowzoo judge fit --config FILE")
    return judge_fit_args(argv[1:])
