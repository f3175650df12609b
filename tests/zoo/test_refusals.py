"""Refusals in one line (issue 24): non-finite weights, bad ``--ckpt_path`` files, outputs that cannot be
written, devices that are not there, and flag combinations that would be silently ignored.

Each test reproduces a case that exited 0 with a wrong result, or ended in a traceback, before its fix.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowzoo.checkpoints import from_pretrained, load_checkpoint, save_pretrained
from flowzoo.cli import main
from flowzoo.errors import CheckpointError, DeviceError
from flowzoo.module import FlowLM
from helpers import TINY_NETWORK

TINY_BACKBONE = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
DATA = {"name": "markov", "init_args": {"num_states": 16, "seq_len": 8, "num_train": 8, "num_val": 8, "batch_size": 4}}
ARCH = list(TINY_NETWORK)
RUN = [
    "--data.num_states=16", "--data.seq_len=8", "--data.num_train=8", "--data.num_val=8", "--data.batch_size=4",
    "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
    "--model.num_val_samples=0", "--model.sampler.steps=2",
]  # fmt: skip


def one_error_line(err: str) -> str:
    """The single ``flowzoo: error:`` line of stderr (Lightning may log other lines); no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("flowzoo: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A real ``flowzoo fit`` checkpoint (1 step; optimizer state, callbacks) of the tiny model."""
    root = tmp_path_factory.mktemp("fitted")
    assert main(["fit", *ARCH, *RUN, "--trainer.max_steps=1", f"--trainer.default_root_dir={root}"]) == 0
    ckpts = sorted(root.rglob("*.ckpt"))
    assert ckpts
    return ckpts[-1]


@pytest.fixture
def saved(tmp_path):
    model = FlowLM(backbone=TINY_BACKBONE, sampler={"name": "euler", "init_args": {"steps": 2}}, vocab_size=16)
    model.data_spec = DATA
    return save_pretrained(model, tmp_path / "model")


# --- non-finite weights (item 4) -----------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_safetensors_are_refused_with_file_and_tensor(saved, bad):
    weights = saved / "model.safetensors"
    state = load_file(weights)
    name = sorted(k for k, v in state.items() if v.dim() == 2)[0]
    state[name][0, 0] = bad
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="non-finite") as refused:
        from_pretrained(saved)
    assert str(weights) in str(refused.value) and name in str(refused.value)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(saved)


def _poisoned_ckpt(source, target, where="state_dict"):
    ckpt = torch.load(source, weights_only=True)
    if where == "state_dict":
        name = sorted(ckpt["state_dict"])[0]
        ckpt["state_dict"][name].view(-1)[0] = float("nan")
    else:  # Adam's first moment of a parameter
        state = ckpt["optimizer_states"][0]["state"]
        name = f"exp_avg of parameter {sorted(state)[0]}"
        state[sorted(state)[0]]["exp_avg"].view(-1)[0] = float("inf")
    torch.save(ckpt, target)
    return name


def test_non_finite_ckpt_weights_are_refused_by_load_checkpoint(fitted, tmp_path):
    target = tmp_path / "nan.ckpt"
    name = _poisoned_ckpt(fitted, target)
    with pytest.raises(CheckpointError, match="non-finite") as refused:
        load_checkpoint(target)
    assert str(target) in str(refused.value) and name in str(refused.value)


@pytest.mark.parametrize("where", ["state_dict", "optimizer"])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_ckpt_path_with_non_finite_tensors_is_refused(fitted, tmp_path, monkeypatch, capsys, command, where):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "nan.ckpt"
    _poisoned_ckpt(fitted, target, where)
    assert main([command, *ARCH, *RUN, "--trainer.max_steps=2", f"--ckpt_path={target}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite" in line and str(target) in line


# --- fit / validate --ckpt_path with unusable checkpoints ---------------------------------------------
class _Anything:  # a pickled object that is not weights
    pass


@pytest.mark.parametrize(
    "what,match",
    [
        ("garbage", "cannot read checkpoint"),
        ("truncated", "cannot read checkpoint"),
        ("pickled", "refused checkpoint"),
        ("not-flowzoo", "is not a flowzoo Lightning checkpoint"),
        ("wrong-architecture", "does not match the model"),
        ("folder", "is a folder; --ckpt_path takes a Lightning .ckpt file"),  # said "does not exist"
    ],
)
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_ckpt_path_refuses_unusable_checkpoints_in_one_line(fitted, tmp_path, monkeypatch, capsys, command, what, match):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "bad.ckpt"
    arch = ARCH
    if what == "garbage":
        target.write_bytes(b"\x00garbage, not a checkpoint" * 10)
    elif what == "truncated":
        target.write_bytes(fitted.read_bytes()[: fitted.stat().st_size // 2])
    elif what == "pickled":
        torch.save({"flowzoo": {}, "state_dict": {}, "callbacks": _Anything()}, target)  # unpickling builds an object
    elif what == "not-flowzoo":
        torch.save({"state_dict": {}}, target)
    elif what == "folder":  # a save_pretrained folder
        target = tmp_path / "pretrained"
        target.mkdir()
    else:
        target = fitted
        arch = [a.replace("width=32", "width=48") for a in ARCH]
    if command == "validate" and what == "wrong-architecture":  # validate builds over the checkpoint's model: the flag conflicts
        match = "--model.backbone.width=48 conflicts with checkpoint"
    assert main([command, *arch, *RUN, "--trainer.max_steps=2", f"--ckpt_path={target}"]) == 2
    assert match in one_error_line(capsys.readouterr().err)


def test_validate_rebuilds_the_model_from_the_checkpoint(fitted, tmp_path, monkeypatch, capsys):
    """No architecture flags: the model is the checkpoint's (width 32), not the CLI default DiT."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *RUN, f"--ckpt_path={fitted}"]) == 0
    out = capsys.readouterr().out
    assert "val/loss" in out


# --- devices that are not there ------------------------------------------------------------------
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
def test_map_location_cuda_without_cuda_says_so(saved, fitted):
    for load in (from_pretrained, load_checkpoint):
        with pytest.raises(DeviceError, match="CUDA is not available") as refused:
            load(saved, map_location="cuda")
        assert "corrupt" not in str(refused.value)
    with pytest.raises(ValueError, match="map_location 'cuda': CUDA is not available"):
        load_checkpoint(fitted, map_location="cuda")
    with pytest.raises(ValueError, match="not a device name"):
        load_checkpoint(fitted, map_location="gpu0")


# --- outputs that cannot be written ---------------------------------------------------------------
def test_fit_refuses_a_root_dir_that_is_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run folder should be")
    for root in (blocker, blocker / "sub"):
        assert main(["fit", *ARCH, *RUN, "--trainer.max_steps=1", f"--trainer.default_root_dir={root}"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "--trainer.default_root_dir" in line and f"{blocker} is a file" in line


def test_publish_output_dir_that_is_a_file_is_refused(saved, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    for target in (blocker, blocker / "model"):
        assert main(["publish", "--model", str(saved), "--repo-id", "me/tiny", "--eval-samples", "0", "--output-dir", str(target)]) == 2
        assert f"{blocker} is a file" in one_error_line(capsys.readouterr().err)


def test_sample_output_that_is_a_folder_or_under_a_file_is_refused(saved, tmp_path, capsys):
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--output", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys.readouterr().err)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--output", str(blocker / "samples.txt")]) == 2
    assert f"{blocker} is a file" in one_error_line(capsys.readouterr().err)


def _benchmark_config(tmp_path, saved, output, **extra):
    import yaml

    config = {"name": "t", "output": str(output), "num_samples": 2, "batch_size": 2, "repeats": 1, "val_batches": 1, "reference": False,
              "models": [{"name": "flow", "checkpoint": str(saved), "samplers": [{"name": "euler", "steps": 1}]}], **extra}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_benchmark_checks_its_output_before_computing(saved, tmp_path, capsys, monkeypatch):
    import flowzoo.benchmark as benchmark

    blocker = tmp_path / "results"
    blocker.write_text("x")
    monkeypatch.setattr(benchmark, "run_row", lambda *a, **k: pytest.fail("a row was computed before the output was checked"))
    for output in (blocker, blocker / "sub"):
        assert main(["benchmark", "--config", str(_benchmark_config(tmp_path, saved, output))]) == 2
        assert f"{blocker} is a file" in one_error_line(capsys.readouterr().err)


def test_benchmark_writes_rows_as_they_complete(saved, tmp_path, monkeypatch):
    """The second row fails: the first is already in results.json, marked incomplete."""
    import flowzoo.benchmark as benchmark

    real, calls = benchmark.run_row, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "run_row", second_fails)
    output = tmp_path / "out"
    samplers = [{"name": "euler", "steps": [1, 2]}]
    config = _benchmark_config(tmp_path, saved, output, models=[{"name": "flow", "checkpoint": str(saved), "samplers": samplers}])
    with pytest.raises(RuntimeError, match="simulated"):
        main(["benchmark", "--config", str(config)])
    results = json.loads((output / "results.json").read_text())
    assert results["complete"] is False and [r["steps"] for r in results["rows"]] == [1]
    assert "| flow | euler | 1 |" in (output / "results.md").read_text()


@no_cuda
def test_benchmark_device_cuda_without_cuda_is_one_line(saved, tmp_path, capsys):
    config = _benchmark_config(tmp_path, saved, tmp_path / "out")
    assert main(["benchmark", "--config", str(config), "--device", "cuda"]) == 2
    assert "CUDA is not available" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_benchmark_rows_that_differ_only_in_sampler_options_have_distinct_labels(saved, tmp_path):
    from flowzoo.benchmark import markdown

    output = tmp_path / "out"
    samplers = [{"name": "euler", "steps": 1}, {"name": "euler", "steps": 1, "init_args": {"decode": "sample", "temperature": 0.5}}]
    config = _benchmark_config(tmp_path, saved, output, models=[{"name": "flow", "checkpoint": str(saved), "samplers": samplers}])
    assert main(["benchmark", "--config", str(config)]) == 0
    results = json.loads((output / "results.json").read_text())
    labels = [r["sampler_label"] for r in results["rows"]]
    assert labels == ["euler", "euler decode=sample temperature=0.5"]
    table = [line for line in markdown(results).splitlines() if line.startswith("| flow | euler")]
    assert len(table) == 2 and len(set(table)) == 2 and "euler decode=sample temperature=0.5" in table[1]


# --- flowzoo sample: --device, ignored flags, long lengths -------------------------------------------
@pytest.mark.parametrize(
    "extra,match",
    [
        (["--temperature", "0.5"], "--temperature has no effect with argmax decoding"),
        (["--option", "temperature=0.5"], "--temperature has no effect with argmax decoding"),
        (["--sampler", "flow_map", "--option", "times=[0,0.5,1]", "--steps", "4"], "--steps has no effect when times"),
        (["--hole-length", "4"], "--hole-length sets the length of --infill's [...] holes"),
        (["--hold", "path"], "--hold says where a prompt's known positions are held"),
        (["--show", "-1"], "--show is how many samples to print, 0 or more; got -1"),
        (["--option", "steps=abc"], "sampler 'euler': --steps must be a number, got 'abc'"),  # was a TypeError traceback
    ],
    ids=["temperature", "temperature-option", "steps-with-times", "hole-length-without-infill", "hold-without-prompt",
         "negative-show", "option-not-a-number"],
)
def test_sample_refuses_flags_that_would_be_ignored(saved, capsys, extra, match):
    assert main(["sample", "--model", str(saved), "--num-samples", "2", *extra]) == 2
    assert match in one_error_line(capsys.readouterr().err)


def test_sample_accepts_the_same_flags_where_they_apply(saved, capsys):
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--decode", "sample", "--temperature", "0.5"]) == 0
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--sampler", "marginal", "--temperature", "0.5"]) == 0


def test_sample_has_a_device_option(saved, capsys):
    assert main(["sample", "--model", str(saved), "--num-samples", "2", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.split("-" * 40)[-1])
    assert report["device"] == "cpu"
    if not torch.cuda.is_available():
        assert main(["sample", "--model", str(saved), "--num-samples", "2", "--device", "cuda"]) == 2
        assert "--device 'cuda': CUDA is not available" in one_error_line(capsys.readouterr().err)


def test_sample_warns_about_a_length_far_beyond_training(saved, capsys):
    assert main(["sample", "--model", str(saved), "--num-samples", "1", "--length", "64"]) == 0  # trained on 8
    err = capsys.readouterr().err
    assert "flowzoo: warning: --length 64 is 8x the training length 8" in err
    assert main(["sample", "--model", str(saved), "--num-samples", "1", "--length", "8"]) == 0
    assert "warning" not in capsys.readouterr().err


# --- a local file given to --data=hub that is not UTF-8 text --------------------------------------------
@pytest.mark.parametrize(
    "content,match",
    [
        ("café naïve\nsecond line\n".encode("latin-1"), "is not UTF-8 text"),
        (bytes(range(256)) * 4, "is not UTF-8 text"),
        (b"", "is empty"),
    ],
    ids=["latin-1", "binary", "empty"],
)
def test_hub_data_names_what_is_wrong_with_a_local_file(tmp_path, content, match):
    from flowzoo.data.hub_text import HubTextData
    from flowzoo.errors import DataError

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    with pytest.raises(DataError, match=match) as refused:
        HubTextData(dataset=str(corpus), cache_dir=str(tmp_path / "cache")).raw
    assert "no such" not in str(refused.value) and str(corpus) in str(refused.value)


# --- a misspelled option: one line with the nearest valid names, not 60 lines of usage ----------------
@pytest.mark.parametrize(
    "arg,match",
    [
        ("--model.sampler.stepz=4", "--model.sampler.stepz: sampler 'euler' has no option 'stepz'; did you mean steps?"),
        ("--model.backbone.widht=4", "did you mean width?"),
        ("--data.seq_lne=4", "--data.seq_lne: data 'markov' has no option 'seq_lne'; did you mean seq_len?"),
        ("--model.lrr=3", "--model.lrr: no such option; did you mean --model.lr?"),
        ("--trainer.max_stepz=3", "did you mean --trainer.max_steps?"),
    ],
)
def test_a_misspelled_option_is_one_line_with_the_nearest_names(tmp_path, monkeypatch, capsys, arg, match):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *ARCH, arg]) == 2
    err = capsys.readouterr().err
    assert match in one_error_line(err)
    assert "usage:" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "arg,match",
    [
        ("--model.sampler.steps=abc", "--model.sampler.steps: expected int, got 'abc'"),  # was '--model.sampler: Parser key "steps":'
        ("--data.seq_len=abc", "--data.seq_len: expected int, got 'abc'"),
        ("--model.lr=abc", "--model.lr: expected float, got 'abc'"),
        ("--config=nope.yaml", "--config: File does not exist: '"),  # was '--config: invalid value'
    ],
)
def test_an_option_value_that_does_not_parse_is_one_line_naming_it(tmp_path, monkeypatch, capsys, arg, match):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *ARCH, arg]) == 2
    assert match in one_error_line(capsys.readouterr().err)


def test_validate_refuses_a_root_dir_that_is_a_file(fitted, tmp_path, monkeypatch, capsys):
    """validate/test write their logs under default_root_dir: a file there was a NotADirectoryError traceback."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    run = [a for a in RUN if a != "--trainer.logger=false"]
    assert main(["validate", *run, f"--trainer.default_root_dir={blocker / 'logs'}", f"--ckpt_path={fitted}"]) == 2
    assert f"{blocker} is a file" in one_error_line(capsys.readouterr().err)


# --- config.json values of the wrong type -------------------------------------------------------------
@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.update(vocab_size="16"), "vocab_size must be an integer, got '16'"),
        (lambda c: c.update(vocab_size=16.0), "vocab_size must be an integer, got 16.0"),
        (lambda c: c["sampler"]["init_args"].update(steps="2"), "sampler 'euler': steps must be a number, got '2'"),
        (lambda c: c["optim"].update(lr="0.001"), "optim: lr must be a number, got '0.001'"),
    ],
    ids=["vocab-string", "vocab-float", "steps-string", "lr-string"],
)
def test_config_values_of_the_wrong_type_are_refused_in_one_line(saved, capsys, edit, match):
    config = json.loads((saved / "config.json").read_text())
    edit(config)
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match) as refused:
        from_pretrained(saved)
    assert "not supported between" not in str(refused.value)
    assert main(["sample", "--model", str(saved), "--num-samples", "1"]) == 2
    assert match in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"name": "euler", "steps": 2, "init_args": {"temperature": 0.5}}, "temperature has no effect with argmax decoding"),
        ({"name": "flow_map", "steps": 1, "init_args": {"times": [0.0, 0.5, 1.0]}}, "steps has no effect when times is set"),
    ],
    ids=["temperature-under-argmax", "steps-beside-times"],
)
def test_benchmark_refuses_sampler_options_that_would_be_ignored(entry, match):
    from flowzoo.benchmark import sampler_grid

    with pytest.raises(ValueError, match=match):
        sampler_grid([entry])
    assert sampler_grid([{**entry, "init_args": {**entry["init_args"], "decode": "sample"}}]) if "temperature" in entry["init_args"] else True


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"name": "euler", "steps": "abc"}, "sampler 'euler': steps must be a number, got 'abc'"),  # said: invalid literal for int()
        ({"name": "euler", "steps": 1, "init_args": {"decode": "sample", "temperature": "hot"}},
         "sampler 'euler': temperature must be a number, got 'hot'"),  # was a TypeError traceback mid-run
    ],
    ids=["steps", "temperature"],
)
def test_benchmark_refuses_sampler_options_that_are_not_numbers(entry, match):
    from flowzoo.benchmark import sampler_grid

    with pytest.raises(ValueError, match=match):
        sampler_grid([entry])


def test_outputs_without_write_permission_are_refused(tmp_path, monkeypatch):
    """Tests run as root, which may write anywhere: the permission check is exercised through os.access."""
    import flowzoo.outputs as outputs

    folder = tmp_path / "readonly"
    folder.mkdir()
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: str(path) != str(folder))
    with pytest.raises(outputs.OutputError, match="the folder is not writable"):
        outputs.check_output_dir(folder, "--output")
    with pytest.raises(outputs.OutputError, match=f"the folder {folder} is not writable"):
        outputs.check_output_dir(folder / "new" / "deeper", "--output")
    with pytest.raises(outputs.OutputError, match=f"the folder {folder} is not writable"):
        outputs.check_output_file(folder / "samples.txt", "--output")
    assert outputs.check_output_dir(tmp_path / "fresh" / "run", "--output") == tmp_path / "fresh" / "run"  # nothing created
    assert not (tmp_path / "fresh").exists()
