import json
import subprocess
import sys

import pytest
import yaml

from flowzoo.cli import expand_short_names, main

TINY = [
    "--model.backbone.width=32",
    "--model.backbone.depth=1",
    "--model.backbone.heads=2",
    "--model.backbone.cond_dim=16",
    "--data.num_train=64",
    "--data.num_val=16",
    "--data.seq_len=8",
    "--data.batch_size=16",
]


def test_list_prints_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("backbone:", "path:", "head:", "objective:", "sampler:", "data:"):
        assert kind in out
    assert "linear" in out and "euler" in out and "markov" in out


def test_short_names_expand_to_class_paths():
    args = expand_short_names(["fit", "--model.head=gaussian", "--model.path", "linear", "--data=markov", "--model.sampler.steps=4"])
    assert args == [
        "fit",
        "--model.head=flowzoo.heads.GaussianHead",
        "--model.path=flowzoo.paths.LinearPath",
        "--data=flowzoo.data.markov.MarkovData",
        "--model.sampler.steps=4",
    ]


def test_unknown_component_name_is_one_clear_message(capsys):
    assert main(["fit", "--model.path=curvy"]) == 2
    err = capsys.readouterr().err
    assert "unknown path 'curvy'" in err and "linear" in err and "Traceback" not in err


def test_print_config_resolves_short_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model.head=gaussian", "--model.sampler.steps=64", "--print_config"])
    assert exit_.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["head"]["class_path"] == "flowzoo.heads.GaussianHead"
    assert config["model"]["sampler"]["init_args"]["steps"] == 64
    assert config["model"]["path"]["class_path"] == "flowzoo.paths.LinearPath"


def test_fit_then_sample_from_the_command_line(tmp_path):
    root = tmp_path / "run"
    code = main(
        ["fit", *TINY, "--trainer.max_steps=3", "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}",
         "--trainer.enable_progress_bar=false", "--model.num_val_samples=4", "--model.head=gaussian"]
    )
    assert code == 0
    ckpts = sorted(root.rglob("*.ckpt"))
    assert [p.parent for p in ckpts] == [root / "checkpoints"], "checkpoints go to <default_root_dir>/checkpoints"
    out = subprocess.run(
        [sys.executable, "-m", "flowzoo", "sample", "--checkpoint", str(ckpts[-1]), "--steps", "4", "--num-samples", "3", "--show", "1"],
        capture_output=True, text=True, check=True,
    ).stdout
    report = json.loads(out[out.index("{"):])
    assert report["nfe"] == 4
    assert 0.0 <= report["metrics"]["valid_transitions"] <= 1.0
    assert report["sampler"]["init_args"]["steps"] == 4


def test_sample_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
