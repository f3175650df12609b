"""``flowzoo classifier fit``: the ``flowzoo fit`` arguments of a sequence classifier (like ``flowzoo judge fit``)."""

import pytest

from flowzoo.classifier_fit import classifier_command, classifier_fit_args
from flowzoo.cli import main
from flowzoo.judges import JudgeError


def test_classifier_fit_args_add_the_classify_objective_and_keep_user_flags_last():
    args = classifier_fit_args(["--trainer.max_steps=5", "--config", "configs/classifier_shakespeare.yaml"])
    assert args[:3] == ["fit", "--config", "configs/classifier_shakespeare.yaml"] and args[-1] == "--trainer.max_steps=5"
    assert "--model.objective=classify" in args and "--trainer.callbacks+=flowzoo.checkpoints.callback.SavePretrained" in args
    with pytest.raises(JudgeError, match="flowzoo classifier fit needs --config"):
        classifier_fit_args(["--trainer.max_steps=5"])
    with pytest.raises(JudgeError, match="unknown classifier command 'train'"):
        classifier_command(["train"])


def test_classifier_command_is_listed_and_explains_itself(capsys):
    assert main(["--help"]) == 0
    assert "classifier" in capsys.readouterr().out
    assert main(["classifier", "--help"]) == 0
    assert "--reward classifier" in capsys.readouterr().out
    assert main(["classifier", "train"]) == 2
    assert "unknown classifier command 'train'" in capsys.readouterr().err
