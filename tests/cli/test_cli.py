import inspect
import json
import re
import subprocess
import sys

import pytest
import yaml

from flowzoo.cli import expand_short_names, main
from helpers import tiny_cli

TINY = tiny_cli()


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
    assert {p.parent for p in ckpts} == {root / "version_0" / "checkpoints"}, "checkpoints go to <default_root_dir>/version_N/checkpoints"
    assert (root / "checkpoints" / "last.ckpt").resolve() == (root / "version_0" / "checkpoints" / "last.ckpt").resolve()
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


def _metric_table(out: str, title: str) -> dict[str, float]:
    """The metrics Lightning prints after validate/test: ``| val/loss | 3.87 |`` rows below ``title``."""
    assert title in out, out
    rows = {}
    for line in out[out.index(title):].splitlines()[1:]:
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if len(cells) == 2 and cells[0].startswith("val/"):
            rows[cells[0]] = float(cells[1])
    return rows


def test_validate_test_and_predict_from_a_fitted_checkpoint(tmp_path, capsys):
    """fit 2 steps, then ``validate`` / ``test`` / ``predict`` with --ckpt_path on the checkpoint it wrote."""
    import torch

    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.data.markov import MarkovData

    root = tmp_path / "run"
    common = [*TINY, "--model.sampler.steps=2", "--model.num_val_samples=4", "--model.lr=0.01", "--model.warmup_steps=1",
              "--trainer.enable_progress_bar=false", "--trainer.logger=false", f"--trainer.default_root_dir={root}"]
    assert main(["fit", *common, "--trainer.max_steps=2", "--trainer.limit_val_batches=1"]) == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    reports = {}
    for command, limit, title in (("validate", "--trainer.limit_val_batches=1", "Validate metric"),
                                  ("test", "--trainer.limit_test_batches=1", "Test metric")):
        assert main([command, *common, limit, f"--ckpt_path={ckpt}"]) == 0, command
        reports[command] = _metric_table(capsys.readouterr().out, title)
    data = MarkovData(num_train=64, num_val=16, seq_len=8, batch_size=16)
    for report in reports.values():
        assert {"val/loss", "val/sample_valid_transitions", "val/sample_nll", "val/sample_entropy_rate"} <= set(report), report
        assert 0.0 <= report["val/sample_valid_transitions"] <= 1.0
        assert report["val/sample_entropy_rate"] == pytest.approx(data.chain.entropy_rate(), rel=1e-6)
    assert reports["test"] == reports["validate"]  # the same split, seeds and weights
    # the reported loss is the checkpoint's (the fitted weights, not a fresh initialisation)
    model = load_checkpoint(ckpt)
    batch = data.val_dataloader().__iter__().__next__()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)  # what validation_step does for batch 0
        expected = model.objective(model, batch)["loss"].item()
    assert reports["validate"]["val/loss"] == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)  # the CLI's seed when fit built the model: its initial weights
    fresh = type(model).from_config(model.config()).eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = fresh.objective(fresh, batch)["loss"].item()
    assert abs(untrained - expected) > 1e-3 * expected  # so the comparison above tells the two apart
    # predict wrote nothing anywhere: it is refused with the command that samples
    assert main(["predict", *common, "--trainer.limit_predict_batches=1", f"--ckpt_path={ckpt}"]) == 2
    assert "flowzoo sample --checkpoint" in capsys.readouterr().err
    # a checkpoint that is not there is refused before anything is built
    assert main(["validate", *common, f"--ckpt_path={tmp_path / 'none.ckpt'}"]) == 2
    assert "does not exist (--ckpt_path)" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_bf16_instructions_trains_in_fp32(tmp_path, monkeypatch, capsys):
    import flowzoo.cli as cli

    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    monkeypatch.delenv("FLOWZOO_CPU_BF16", raising=False)
    root = tmp_path / "run"
    code = main(["fit", *TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={root}",
                 "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed"])
    assert code == 0 and "no bf16 instructions" in capsys.readouterr().err
    saved = yaml.safe_load(next(root.rglob("config.yaml")).read_text())
    assert saved["trainer"]["precision"] == "32-true"
    assert cli.cpu_precision("bf16-mixed", "gpu") == "bf16-mixed"  # not on the CPU: as asked
    monkeypatch.setenv("FLOWZOO_CPU_BF16", "1")
    assert cli.cpu_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv("FLOWZOO_CPU_BF16")
    assert cli.cpu_precision("bf16-mixed", "cpu") == "bf16-mixed" and cli.cpu_precision("32-true", "cpu") == "32-true"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_top_level_help_lists_every_subcommand(argv, capsys):
    from flowzoo.cli import _HANDLERS, COMMANDS, LIGHTNING_COMMANDS

    assert set(_HANDLERS) | set(LIGHTNING_COMMANDS) == set(COMMANDS)  # a command without its help line fails here
    code = main(argv)
    assert code == (2 if not argv else 0)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    for name in ("fit", "validate", "test", "predict", "sample", "list", "benchmark", "publish", "judge"):
        assert name in COMMANDS and len(lines[name].split()) > 2  # the command, then its one line
    assert set(COMMANDS) <= set(lines)


def test_subcommand_help_is_its_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--model.objective" in out  # Lightning's fit help
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--help"])
    assert exit_.value.code in (0, None) and "--checkpoint" in capsys.readouterr().out
    assert main(["list", "--help"]) == 0 and "usage: flowzoo list" in capsys.readouterr().out


def _printed_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_switching_a_component_by_name_starts_from_the_new_class_defaults(tmp_path, capsys):
    """A config with euler at steps 128 and markov data with seq_len 32, batch 64 (as configs/markov_flow.yaml): a new
    name drops them."""
    from flowzoo.data.shakespeare import ShakespeareData
    from flowzoo.samplers.flow_map import FlowMapSampler

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"sampler": {"class_path": "flowzoo.samplers.EulerSampler", "init_args": {"steps": 128}}},
        "data": {"class_path": "flowzoo.data.markov.MarkovData", "init_args": {"seq_len": 32, "batch_size": 64}},
    }))

    flow_map_steps = inspect.signature(FlowMapSampler).parameters["steps"].default
    text = inspect.signature(ShakespeareData).parameters
    config = _printed_config(capsys, "--config", str(base), "--model.sampler=flow_map", "--data=shakespeare")
    assert config["model"]["sampler"]["init_args"]["steps"] == flow_map_steps == 1
    assert config["data"]["init_args"]["seq_len"] == text["seq_len"].default != 32
    assert config["data"]["init_args"]["batch_size"] == text["batch_size"].default != 64
    # arguments given after the switch still apply; the same name keeps the config's arguments
    config = _printed_config(capsys, "--config", str(base), "--model.sampler", "flow_map", "--model.sampler.steps=4",
                             "--data=shakespeare", "--data.seq_len=16")
    assert config["model"]["sampler"]["init_args"]["steps"] == 4 and config["data"]["init_args"]["seq_len"] == 16
    config = _printed_config(capsys, "--config", str(base), "--model.sampler=euler", "--data=markov")
    assert config["model"]["sampler"]["init_args"]["steps"] == 128 and config["data"]["init_args"]["seq_len"] == 32
    # a second config file that switches the sampler starts from the new class's defaults too
    second = tmp_path / "second.yaml"
    second.write_text("model:\n  sampler:\n    class_path: flowzoo.samplers.flow_map.FlowMapSampler\n")
    config = _printed_config(capsys, "--config", str(base), "--config", str(second))
    assert config["model"]["sampler"]["init_args"]["steps"] == 1
