"""``flowzoo classifier fit``: the ``flowzoo fit`` arguments that train a sequence classifier, the network of the
``classifier`` reward (see :mod:`flowzoo.objectives.classify`, docs/rewards.md).

Like ``flowzoo judge fit`` (:mod:`flowzoo.judge_fit`) the command only builds the argument list, which
``flowzoo.cli`` runs with its Lightning entry point.
"""

from __future__ import annotations

from typing import Sequence

from flowzoo.judge_fit import preset_command, preset_fit_args

CLASSIFIER_FLAGS = ("--model.objective=classify", "--model.num_val_samples=0")
CLASSIFIER_CONFIG = "configs/classifier_shakespeare.yaml"
USAGE = (
    f"usage: flowzoo classifier fit --config {CLASSIFIER_CONFIG} [--trainer.max_steps=N ...]\n\n"
    "Trains a sequence classifier (the classify objective: a backbone and a pooled linear head) on labelled data\n"
    "(--data=shakespeare_plays: rows labelled by their play's genre) with flowzoo fit, logs val/accuracy, and writes\n"
    "it with save_pretrained to <trainer.default_root_dir>/pretrained; use it as a reward with\n"
    "--reward classifier --reward-option checkpoint=<that directory> --reward-option target=tragedy."
)


def classifier_fit_args(argv: Sequence[str]) -> list[str]:
    """``flowzoo fit`` arguments for a classifier: the config file(s), then the classify objective (the config's
    ``classes`` kept) and no sample metrics in validation, a callback writing ``save_pretrained`` to
    ``<default_root_dir>/pretrained`` at the end of training, then the user's own flags."""
    return preset_fit_args(argv, CLASSIFIER_FLAGS, "classifier", CLASSIFIER_CONFIG)


def classifier_command(argv: Sequence[str]) -> list[str] | None:
    """``flowzoo classifier ARGS`` -> the ``flowzoo`` arguments to run (``fit ...``), or None after printing the usage."""
    return preset_command(argv, "classifier", USAGE, classifier_fit_args)
