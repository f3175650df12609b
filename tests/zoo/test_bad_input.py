"""Bad input gets one clear message: a flowzoo error or ValueError naming the problem in Python, and
``flowzoo: error: ...`` with exit status 2 (no traceback) on the command line.

Cases already covered elsewhere are not repeated here: unknown names (test_registry, test_cli),
denoise time checks (test_components), corrupt or mismatched checkpoints (test_checkpoints, test_hub),
too-short text corpora in Python (test_data_text).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from flowzoo import registry
from flowzoo.checkpoints import from_pretrained, load_checkpoint, save_pretrained
from flowzoo.cli import bad_input_message, main
from flowzoo.errors import CheckpointError, DataError, UnknownComponentError
from flowzoo.module import FlowLM
from flowzoo.paths import LinearPath
from flowzoo.validation import check_choice, check_times, check_tokens
from helpers import TINY_NETWORK

V, L, B = 11, 6, 3
TINY_BACKBONE = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
TINY_ARGS = [
    *TINY_NETWORK,
    "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
    "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--model.num_val_samples=0",
]  # fmt: skip
DATA = {"name": "markov", "init_args": {"num_states": 16, "seq_len": 8, "num_train": 8, "num_val": 8}}


def tiny(**parts) -> FlowLM:
    return FlowLM(backbone=TINY_BACKBONE, vocab_size=V, **parts)


def one_error_line(err: str) -> str:
    """The single ``flowzoo: error:`` line of stderr (Lightning may log other lines); no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("flowzoo: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- tensors into the model, path and samplers -------------------------------------------------
def test_logits_checks_times_like_denoise():
    model = tiny()
    x = torch.randn(B, L, V)
    with pytest.raises(ValueError, match=r"time t must lie in \[0, 1\]"):
        model.logits(x, torch.full((B,), 1.5))
    with pytest.raises(ValueError, match=r"time s must lie in \[0, 1\]"):
        model.logits(x, torch.full((B,), 0.5), s=torch.full((B,), -0.1))
    with pytest.raises(ValueError, match="must not exceed"):
        model.logits(x, torch.full((B,), 0.2), s=torch.full((B,), 0.6))
    with pytest.raises(ValueError, match=r"time t must have shape \(3,\), got \(4,\)"):
        model.logits(x, torch.rand(B + 1))
    with pytest.raises(ValueError, match="without a target time"):
        model.logits(x, None, s=torch.rand(B))
    assert model.logits(x, torch.rand(B), s=torch.zeros(B)).shape == (B, L, V)  # s <= t is fine


def test_token_ids_out_of_the_vocabulary_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model.logits(torch.full((B, L), V + 3), torch.rand(B))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model.denoise(torch.full((B, L), -1), torch.rand(B))
    # the masked path's [MASK] id V is a valid input, V + 1 is not
    masked = tiny(path="masked", objective="mdlm", sampler="ancestral")
    assert masked.logits(torch.full((B, L), V), torch.rand(B)).shape == (B, L, V)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        masked.logits(torch.full((B, L), V + 1), torch.rand(B))


@pytest.mark.parametrize(
    "batch,match",
    [
        (torch.full((B, L), V + 3), r"token ids must lie in \[0, 11\), got \[14, 14\]"),
        (torch.randn(B, L), "integer ids"),
        (torch.randint(0, V, (B, L, 2)), r"shape \(B, L\)"),
    ],
    ids=["out-of-vocabulary", "float", "3d"],
)
def test_bad_training_batches_are_refused_before_the_objective(batch, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        model.training_step(batch, 0)
    with pytest.raises(ValueError, match=match):  # the objective alone reaches the path's check
        model.objective(model, batch)


def test_value_checks_can_be_skipped_but_shape_checks_cannot():
    """values=False (the training path on CUDA: no device sync) skips ranges, never shapes."""
    check_times(torch.full((B,), 2.0), torch.full((B,), 3.0), batch=B, values=False)
    check_tokens(torch.full((B, L), 99), V, values=False)
    with pytest.raises(ValueError, match="shape"):
        check_times(torch.rand(B, 1), batch=B, values=False)
    with pytest.raises(ValueError, match="shape"):
        check_tokens(torch.zeros(B, L, 1, dtype=torch.long), V, values=False)


def test_an_unknown_option_value_is_refused_with_the_choices_listed():
    check_choice("tau", ("linear", "tau"), "time")  # a valid one passes
    with pytest.raises(ValueError, match=r"^unknown time 'cosine'; choices: linear, tau$"):
        check_choice("cosine", ("linear", "tau"), "time")
    with pytest.raises(LookupError, match=r"^euler: unknown grid 'log'; choices: linspace, uniform"):
        check_choice("log", ("linspace", "uniform"), "grid", LookupError, where="euler")
    # through a component: the path's own option
    with pytest.raises(ValueError, match=r"unknown time 'cosine'; choices: "):
        LinearPath(time="cosine")


def test_linear_path_checks_its_inputs():
    path = LinearPath()
    x1 = torch.randint(0, V, (B, L))
    with pytest.raises(ValueError, match=r"time t must have shape \(3,\), got \(4,\)"):
        path.sample(x1, torch.rand(B + 1), V)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        path.sample(x1, torch.full((B,), 2.0), V)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        path.sample(x1 + 5, torch.rand(B), 5)
    x, delta = torch.randn(B, L, V), torch.softmax(torch.randn(B, L, V), -1)
    with pytest.raises(ValueError, match="must not exceed"):
        path.flow_map(x, delta, torch.full((B,), 0.6), torch.full((B,), 0.2))
    with pytest.raises(ValueError, match=r"time t must lie in \[0, 1\]"):
        path.flow_map(x, delta, torch.full((B,), 0.2), torch.full((B,), 1.2))
    with pytest.raises(ValueError, match="state's shape"):
        path.flow_map(x, delta[..., :-1], torch.zeros(B), torch.ones(B))
    with pytest.raises(ValueError, match="state's shape"):
        path.velocity(x, torch.randn(B, L, V + 1), torch.rand(B))


@pytest.mark.parametrize("times", [[0.0, 0.7, 0.5, 1.0], [0.0, 0.5, 1.5], [0.2, 1.0], [0.0]])
def test_flow_map_schedule_lists_must_run_from_0_to_1(times):
    with pytest.raises(ValueError, match="times must increase strictly from 0.0 to 1.0"):
        registry.build("sampler", {"name": "flow_map", "init_args": {"times": times}})


def test_generate_refuses_empty_requests():
    model = tiny()
    with pytest.raises(ValueError, match="must be positive"):
        model.generate(0, L)
    with pytest.raises(ValueError, match="must be positive"):
        model.generate(2, 0)
    with pytest.raises(UnknownComponentError, match="valid sampler names: .*euler"):
        model.generate(2, L, sampler="curvy")


# --- data ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,match",
    [({"num_states": 3}, "at least 10 states"), ({"num_train": 0}, "must be positive"), ({"seq_len": 1}, "seq_len must be at least 2")],
)
def test_markov_refuses_too_little(args, match):
    with pytest.raises(DataError, match=match):
        registry.build("data", {"name": "markov", "init_args": args})


def test_empty_splits_are_refused_by_name():
    from flowzoo.data.markov import MarkovData

    class NoValidation(MarkovData):  # a data module whose build gives an empty split
        def build_splits(self):
            splits = super().build_splits()
            return {"train": splits["train"], "validation": splits["validation"].select([])}

    with pytest.raises(DataError, match="validation split is empty.*seq_len=8"):
        NoValidation(num_states=16, seq_len=8, num_train=4, num_val=4).splits


# --- checkpoints -------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = FlowLM(backbone=TINY_BACKBONE, sampler={"name": "euler", "init_args": {"steps": 2}}, vocab_size=16)
    model.data_spec = DATA
    return save_pretrained(model, tmp_path / "model")


def _edit_config(directory, edit):
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_older_major_version_and_incomplete_configs_are_refused(saved, monkeypatch):
    import flowzoo

    monkeypatch.setattr(flowzoo, "__version__", "1.2.0")
    with pytest.raises(CheckpointError, match=r"written by flowzoo 0\.1\.0, an older major version.*flowzoo 0\.x"):
        from_pretrained(saved)
    monkeypatch.undo()
    _edit_config(saved, lambda c: c.pop("vocab_size"))
    with pytest.raises(CheckpointError, match="lacks 'vocab_size'"):
        from_pretrained(saved)
    _edit_config(saved, lambda c: c.update(vocab_size=16, flowzoo_version="one"))
    with pytest.raises(CheckpointError, match="unreadable flowzoo_version 'one'"):
        from_pretrained(saved)


def test_missing_directories_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        FlowLM.from_pretrained("no-such-model-dir")  # a bare name is a repo id: offline, not cached
    with pytest.raises(CheckpointError, match="neither a local directory nor a Hub repo id"):
        FlowLM.from_pretrained(str(tmp_path / "missing" / "model"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


# --- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,match",
    [
        (["--steps", "0"], "steps must be at least 1, got 0"),
        (["--num-samples", "0"], "num_samples and length must be positive"),
        (["--length", "0"], "num_samples and length must be positive"),
        (["--decode", "sample", "--temperature", "-1"], "temperature must be positive"),
        (["--sampler", "marginal", "--steps", "2"], "sampler 'marginal' has no option --steps; its options: temperature"),
        (["--sampler", "curvy"], "unknown sampler 'curvy'; valid sampler names"),
        (["--sampler", "ancestral"], "sampler 'ancestral' cannot be used with path 'linear'"),
        (["--option", "churn=0.5"], "sampler 'euler' has no option --churn; its options: steps, decode, temperature"),
        (["--option", "gamma"], "--option expects KEY=VALUE, got 'gamma'"),
        (["--option", "gamma=1.5"], "gamma must lie in [0, 1], got 1.5"),
    ],
    ids=["steps", "num-samples", "length", "temperature", "option-of-another-sampler", "unknown-sampler", "incompatible-sampler",
         "unknown-option", "option-without-value", "gamma-out-of-range"],
)
def test_sample_refuses_bad_options(saved, capsys, extra, match):
    assert main(["sample", "--model", str(saved), *extra]) == 2
    assert match in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "what,match",
    [
        ("garbage", "model.safetensors is corrupt or truncated"),
        ("empty", "model.safetensors is corrupt or truncated"),
        ("newer", "written by flowzoo 9.0.0, which this flowzoo"),
        ("bad-ckpt", "cannot read checkpoint"),
        ("missing-dir", "does not exist"),
    ],
)
def test_sample_refuses_bad_checkpoints(saved, tmp_path, capsys, what, match):
    target = saved
    if what == "garbage":
        (saved / "model.safetensors").write_bytes(b"\xff" * 64)
    elif what == "empty":
        (saved / "model.safetensors").write_bytes(b"")
    elif what == "newer":
        _edit_config(saved, lambda c: c.update(flowzoo_version="9.0.0"))
    elif what == "bad-ckpt":
        target = tmp_path / "last.ckpt"
        target.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        target = tmp_path / "gone" / "model"
    assert main(["sample", "--checkpoint", str(target), "--num-samples", "2"]) == 2
    assert match in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--model.sampler.steps=0"], "steps must be at least 1, got 0"),
        (["--model.path.t_max=1.5"], "t_max must lie in (0, 1], got 1.5"),
        (["--model.lr_schedule=wavy"], "unknown lr_schedule 'wavy'"),
        (["--data.num_states=3"], "a Markov language needs at least 10 states, got 3"),
        (["--data.num_train=0"], "num_train and num_val must be positive"),
        (["--data.seq_len=1"], "seq_len must be at least 2, got 1"),
    ],
)
def test_fit_refuses_bad_component_arguments_in_one_line(tmp_path, monkeypatch, capsys, args, match):
    """A component's refusal inside jsonargparse's multi-line union report comes out as that refusal alone."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY_ARGS, *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert match in line and "Union" not in line and "Namespace" not in line


def test_fit_refuses_a_too_short_corpus(tmp_path, monkeypatch, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Shall I compare thee to a summer's day?\n")
    monkeypatch.chdir(tmp_path)
    args = ["--data=shakespeare", f"--data.text_files=[{short}]", "--data.seq_len=64", f"--data.cache_dir={tmp_path / 'cache'}"]
    assert main(["fit", *TINY_ARGS, *args]) == 2
    assert "the corpus is too short" in one_error_line(capsys.readouterr().err)
    args = ["--data=shakespeare", f"--data.text_files=[{tmp_path / 'nowhere.txt'}]", f"--data.cache_dir={tmp_path / 'cache'}"]
    assert main(["fit", *TINY_ARGS, *args]) == 2
    assert "cannot read text file" in one_error_line(capsys.readouterr().err)


def test_errors_that_are_not_refusals_keep_their_traceback():
    """A ValueError raised outside flowzoo's checks is a bug, not bad input: the CLI re-raises it."""
    try:
        int("x")  # raised inside Python, not by flowzoo
    except ValueError as err:
        assert bad_input_message(err) is None
    try:
        check_times(torch.full((2,), 2.0))
    except ValueError as err:
        assert bad_input_message(err).startswith("time t must lie in [0, 1]")
    try:
        try:
            check_times(torch.full((2,), 2.0))
        except ValueError as inner:
            raise ValueError("Does not validate against any of the Union subtypes\n...") from inner
    except ValueError as err:
        assert bad_input_message(err).startswith("time t must lie in [0, 1]")


def test_the_console_command_prints_one_line_and_exits_2(saved):
    """The real process: ``python -m flowzoo sample`` on a corrupt weight file."""
    (saved / "model.safetensors").write_bytes(b"\x00" * 5)
    out = subprocess.run(
        [sys.executable, "-m", "flowzoo", "sample", "--model", str(saved)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 2
    assert "corrupt or truncated" in one_error_line(out.stderr) and out.stdout == ""


@pytest.mark.parametrize("form", [["--ckpt_path=nope.ckpt"], ["--ckpt_path", "nope.ckpt"]], ids=["equals", "separate"])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_lightning_commands_refuse_a_missing_ckpt_path_before_building(tmp_path, monkeypatch, capsys, command, form):
    monkeypatch.chdir(tmp_path)
    assert main([command, *TINY_ARGS, *form]) == 2
    assert "checkpoint nope.ckpt does not exist (--ckpt_path)" in one_error_line(capsys.readouterr().err)


def test_sample_refuses_an_output_file_in_a_missing_folder(saved, tmp_path, capsys):
    target = tmp_path / "no" / "such" / "folder" / "samples.txt"
    assert main(["sample", "--model", str(saved), "--output", str(target)]) == 2
    assert "its folder does not exist" in one_error_line(capsys.readouterr().err)
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--output", str(tmp_path / "samples.txt")]) == 0
    assert len((tmp_path / "samples.txt").read_text().splitlines()) == 2
