"""``--ckpt_path`` with ``--model.*`` flags (issue 24). validate/test: the model is the checkpoint's, settings that do
not change the weights (the sampler and its options, ``num_val_samples``) apply over it, and a flag that contradicts
the checkpoint's architecture, path, head or objective is refused in one line naming both values. fit: the
checkpoint's settings (warm-up, ``num_val_samples``, ...) are the defaults and a flag given on the command line wins
(Lightning's own reading of the checkpoint silently put them over the flags)."""

import pytest

from flowzoo import registry
from flowzoo.cli import main
from flowzoo.module import FlowLM
from helpers import TINY_NETWORK

ARCH = list(TINY_NETWORK)
DATA = ["--data.num_states=16", "--data.seq_len=8", "--data.num_train=8", "--data.num_val=8", "--data.batch_size=4"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.limit_val_batches=1",
         "--trainer.limit_test_batches=1"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 1-step ``flowzoo fit`` checkpoint: euler sampler with 2 steps, 4 validation samples, 5 warm-up steps."""
    root = tmp_path_factory.mktemp("fitted")
    args = ["fit", *ARCH, *DATA, *QUIET, "--model.sampler.steps=2", "--model.num_val_samples=4", "--model.warmup_steps=5",
            "--trainer.max_steps=1",
            f"--trainer.default_root_dir={root}"]  # fmt: skip
    assert main(args) == 0
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture
def evaluated(monkeypatch):
    """The sampler spec and sample count of the model each validate/test actually samples with."""
    seen = []
    real = FlowLM._log_sample_metrics

    def record(self):
        seen.append((registry.spec(self.sampler), self.num_val_samples, self.backbone.width if hasattr(self.backbone, "width") else None))
        return real(self)

    monkeypatch.setattr(FlowLM, "_log_sample_metrics", record)
    return seen


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("flowzoo: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("command", ["validate", "test"])
def test_sampler_and_sample_count_flags_apply_over_the_checkpoint(fitted, evaluated, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert main([command, *DATA, *QUIET, "--model.sampler.steps=5", "--model.num_val_samples=3", f"--ckpt_path={fitted}"]) == 0
    spec, count, _ = evaluated[-1]
    assert spec["name"] == "euler" and spec["init_args"]["steps"] == 5, spec
    assert count == 3


def test_without_flags_the_checkpoint_s_own_settings_are_used(fitted, evaluated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *DATA, *QUIET, f"--ckpt_path={fitted}"]) == 0
    spec, count, _ = evaluated[-1]
    assert (spec["name"], spec["init_args"]["steps"], count) == ("euler", 2, 4)


def test_a_sampler_switched_by_name_starts_from_its_own_defaults(fitted, evaluated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *DATA, *QUIET, "--model.sampler=flow_map", f"--ckpt_path={fitted}"]) == 0
    spec, _, _ = evaluated[-1]
    default = registry.spec(registry.build("sampler", "flow_map"))
    assert spec == default  # not euler's steps=2 carried over


def test_flags_equal_to_the_checkpoint_are_accepted(fitted, evaluated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = [*ARCH, "--model.path=linear", "--model.head=categorical", "--model.objective=flow_matching"]
    assert main(["validate", *same, *DATA, *QUIET, f"--ckpt_path={fitted}"]) == 0
    assert evaluated


@pytest.mark.parametrize(
    "flag,match",
    [
        ("--model.backbone.width=48", "--model.backbone.width=48 conflicts with checkpoint"),
        ("--model.backbone.init_args.depth=3", "--model.backbone.depth=3 conflicts with checkpoint"),
        ("--model.path=masked", "--model.path=masked conflicts with checkpoint"),
        ("--model.head=gaussian", "--model.head=gaussian conflicts with checkpoint"),
        ("--model.objective=mdlm", "--model.objective=mdlm conflicts with checkpoint"),
        ("--model.path.sigma=0.5", "--model.path.sigma=0.5 conflicts with checkpoint"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "test"])
def test_a_flag_that_contradicts_the_checkpoint_is_refused_in_one_line(fitted, evaluated, tmp_path, monkeypatch, capsys,
                                                                         command, flag, match):
    monkeypatch.chdir(tmp_path)
    assert main([command, *DATA, *QUIET, flag, f"--ckpt_path={fitted}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert match in line and str(fitted) in line, line
    assert not evaluated  # refused before anything was evaluated


def test_the_conflict_names_the_checkpoint_s_value(fitted, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *DATA, *QUIET, "--model.backbone.width=48", f"--ckpt_path={fitted}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "trained with width=32" in line, line
    assert main(["validate", *DATA, *QUIET, "--model.path=masked", f"--ckpt_path={fitted}"]) == 2
    assert "trained with path 'linear'" in one_error_line(capsys.readouterr().err)


def test_a_config_file_that_contradicts_the_checkpoint_is_refused(fitted, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "eval.yaml"
    dit, euler = (registry.class_path(registry.get(kind, name)) for kind, name in (("backbone", "dit"), ("sampler", "euler")))
    config.write_text(yaml.safe_dump({"model": {"backbone": {"class_path": dit, "init_args": {"depth": 2}},
                                                "sampler": {"class_path": euler, "init_args": {"steps": 3}}}}))
    assert main(["validate", f"--config={config}", *DATA, *QUIET, f"--ckpt_path={fitted}"]) == 2
    assert "--model.backbone.depth=2 conflicts with checkpoint" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def resumed(monkeypatch):
    """``(num_val_samples, warmup_steps)`` of the model each fit trains."""
    seen = []
    real = FlowLM.on_fit_start

    def record(self):
        seen.append((self.num_val_samples, self.warmup_steps))
        return real(self)

    monkeypatch.setattr(FlowLM, "on_fit_start", record)
    return seen


def test_fit_resumes_with_the_checkpoint_s_settings_and_the_command_line_s_flags(fitted, resumed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["fit", *ARCH, *DATA, *QUIET, "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    assert main([*common, f"--ckpt_path={fitted}"]) == 0
    assert resumed[-1] == (4, 5)  # the run's own settings, not the CLI defaults (64, 100)
    assert main([*common, "--model.num_val_samples=3", "--model.warmup_steps=7", f"--ckpt_path={fitted}"]) == 0
    assert resumed[-1] == (3, 7)  # the flags given (were silently replaced by the checkpoint's 4 and 5)


def test_validate_without_a_checkpoint_warns_that_the_model_is_untrained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *ARCH, *DATA, *QUIET, "--model.num_val_samples=0"]) == 0
    assert "flowzoo: warning: validate without --ckpt_path evaluates a freshly initialised model" in capsys.readouterr().err
