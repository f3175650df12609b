"""The run lifecycle of ``flowzoo fit``: run folders, the final save, EMA with warm-up, exact resume."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from flowzoo.cli import main
from helpers import tiny_cli

TESTS = Path(__file__).resolve().parents[1]  # tests/, where run_helpers.py lives
TINY = tiny_cli() + [
    "--model.sampler.steps=2",
    "--model.warmup_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
]
QUIET_VAL = ["--trainer.limit_val_batches=0", "--model.num_val_samples=0"]


def checkpointing(every: int) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.every_n_train_steps={every}",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=-1"]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- run folders -------------------------------------------------------------------------------------------------
def test_a_second_fit_into_the_same_root_gets_its_own_folder_and_last_ckpt_points_to_it(tmp_path, capsys):
    root = tmp_path / "run"
    for seed in (0, 1):
        assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=2", f"--seed_everything={seed}",
                     f"--trainer.default_root_dir={root}"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "latest", "pretrained", "version_0", "version_1"]
    assert (root / "latest").resolve() == (root / "version_1").resolve()
    first, second = (root / "version_0/checkpoints/last.ckpt"), (root / "version_1/checkpoints/last.ckpt")
    newest = weights(root / "checkpoints/last.ckpt")  # the path the docs and `make quickstart` sample
    assert all(torch.equal(newest[k], v) for k, v in weights(second).items())
    assert any(not torch.equal(newest[k], v) for k, v in weights(first).items())
    for run in ("version_0", "version_1"):
        names = sorted(p.name for p in (root / run / "checkpoints").iterdir())
        assert names == ["epoch=0-step=2.ckpt", "last.ckpt"], names  # no last-v1.ckpt beside another run's last.ckpt
    assert (root / "pretrained/config.json").is_file()
    assert (root / "pretrained").resolve() == (root / "version_1/pretrained").resolve()
    assert "run folder" in capsys.readouterr().err


def test_a_fit_refused_while_building_its_data_leaves_no_run_folder_and_latest_on_the_last_real_run(tmp_path, capsys):
    missing = ["fit", "--data=text", f"--data.files=[{tmp_path / 'no_such.txt'}]", "--model.backbone.width=32",
               "--model.backbone.depth=1", "--model.backbone.heads=2", "--model.backbone.cond_dim=16", "--trainer.max_steps=1"]
    fresh = tmp_path / "fresh"
    assert main([*missing, f"--trainer.default_root_dir={fresh}"]) != 0
    assert "cannot read" in capsys.readouterr().err
    assert not fresh.exists() or sorted(p.name for p in fresh.iterdir()) == []  # no empty version_0, no dangling links
    root = tmp_path / "run"
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=1", f"--trainer.default_root_dir={root}"]) == 0
    assert main([*missing, f"--trainer.default_root_dir={root}"]) != 0
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "latest", "pretrained", "version_0"]
    assert (root / "latest").resolve() == (root / "version_0").resolve()
    assert (root / "checkpoints/last.ckpt").is_file()
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=1", f"--trainer.default_root_dir={root}"]) == 0
    assert (root / "latest").resolve() == (root / "version_1").resolve()  # the next real run takes the next number


def test_fits_started_at_once_never_share_a_folder(tmp_path):
    from flowzoo.runs import new_run

    folders, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        folders.append(new_run(tmp_path / "root"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f.name for f in folders) == [f"version_{i}" for i in range(8)]


def test_a_folder_of_the_earlier_layout_is_moved_into_a_run_folder(tmp_path):
    from flowzoo.runs import choose_run_dir

    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"old")
    run = choose_run_dir(str(root), None)
    assert (root / "version_0/checkpoints/last.ckpt").read_bytes() == b"old"
    assert run == root / "version_1" and (root / "checkpoints").is_symlink()
    assert choose_run_dir(str(root), "last") == run  # --ckpt_path last resumes in the newest run
    assert choose_run_dir(str(root), str(root / "version_0/checkpoints/last.ckpt")) == root / "version_2"


# --- the end of training always saves ------------------------------------------------------------------------------
def test_last_ckpt_is_the_final_step_and_pretrained_is_written(tmp_path):
    from flowzoo.checkpoints import load_checkpoint

    root = tmp_path / "run"
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=7", *checkpointing(5), f"--trainer.default_root_dir={root}"]) == 0
    files = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert files == ["epoch=1-step=5.ckpt", "epoch=1-step=7.ckpt", "last.ckpt"], files  # 4 batches per epoch
    assert ckpt(root / "checkpoints/last.ckpt")["global_step"] == 7
    model = load_checkpoint(root / "pretrained")
    final = weights(root / "checkpoints/last.ckpt")
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items() if k in final)


def test_two_checkpoint_callbacks_and_a_resume_under_another_cadence_keep_one_last_ckpt_at_the_newest_step(tmp_path):
    """Two ModelCheckpoints with ``save_last`` unset (flowzoo turns it on) share ``last.ckpt``; resumed under a
    cadence whose callback did not write it, the run still overwrites it (Lightning's version counter would write
    ``last-v1.ckpt`` both times and leave ``last.ckpt`` at an older step)."""
    root = tmp_path / "run"

    def every(*cadences: int) -> list[str]:
        return [arg for k in cadences for arg in ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                                                  f"--trainer.callbacks.every_n_train_steps={k}")]

    common = [*TINY, *QUIET_VAL, f"--trainer.default_root_dir={root}"]
    assert main(["fit", *common, "--trainer.max_steps=5", *every(3, 2)]) == 0
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert ckpt(root / "checkpoints/last.ckpt")["global_step"] == 5
    assert main(["fit", *common, "--trainer.max_steps=9", *every(7), "--ckpt_path", "last"]) == 0
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert ckpt(root / "checkpoints/last.ckpt")["global_step"] == 9


def test_a_max_time_stop_saves_its_step_and_a_resume_gets_max_time_again(tmp_path, capsys):
    root = tmp_path / "run"
    common = [*TINY, *QUIET_VAL, "--trainer.max_steps=100000", "--trainer.max_time=00:00:00:02", *checkpointing(100000),
              f"--trainer.default_root_dir={root}"]
    assert main(["fit", *common]) == 0
    first = ckpt(root / "checkpoints/last.ckpt")["global_step"]
    assert 0 < first < 100000
    assert "training stopped (max_time)" in capsys.readouterr().err
    assert main(["fit", *common, "--ckpt_path", "last"]) == 0
    second = ckpt(root / "checkpoints/last.ckpt")["global_step"]
    assert (root / "latest").resolve().name == "version_0", "--ckpt_path last continues in the same run folder"
    # the resumed run trained for another ~2 s: Lightning's Timer, restoring the 2 s spent before, stops it after 1 step
    assert second - first >= 3, (first, second)


# --- EMA ---------------------------------------------------------------------------------------------------------
def test_ema_decay_follows_the_warm_up_formula():
    from torch.optim.swa_utils import AveragedModel

    from flowzoo.callbacks import EMA, ema_decay, ema_update

    assert ema_decay(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay(8, 0.999) == pytest.approx(0.5)
    assert ema_decay(10**6, 0.999) == 0.999 and ema_decay(1, 0.999, warmup=False) == 0.999
    net = torch.nn.Linear(3, 1, bias=False)
    callback = EMA(decay=0.9)
    avg = AveragedModel(net, **callback._kwargs)
    expected, values = None, [torch.full((1, 3), float(v)) for v in (1.0, 5.0, -2.0, 7.0, 3.0)]
    for n, value in enumerate(values):
        with torch.no_grad():
            net.weight.copy_(value)
        avg.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = value.clone() if n == 0 else d * expected + (1 - d) * value
        assert torch.allclose(avg.module.weight, expected), n
    flag_avg, flag_live = [torch.zeros((), dtype=torch.bool)], [torch.ones((), dtype=torch.bool)]
    ema_update(flag_avg, flag_live, torch.tensor(3), beta=0.9)  # a boolean buffer takes the live value
    assert bool(flag_avg[0])


def test_a_run_shorter_than_the_ema_start_saves_its_trained_weights_not_the_init(tmp_path):
    root = tmp_path / "run"
    ema = ["--trainer.callbacks+=flowzoo.callbacks.EMA", "--trainer.callbacks.update_starting_at_step=100"]
    common = [*TINY, *QUIET_VAL, "--model.lr=0.01", *checkpointing(1), *ema, f"--trainer.default_root_dir={root}"]
    assert main(["fit", *common, "--trainer.max_steps=3"]) == 0
    init = weights(root / "checkpoints/epoch=0-step=1.ckpt")  # not the init, but one step from it
    last = ckpt(root / "checkpoints/last.ckpt")
    assert "averaging_state" not in last, "no average before the EMA starts: the live weights"
    assert any(not torch.equal(last["state_dict"][k], v) for k, v in init.items())
    # and with the EMA from step 0 (the configs' setting), a short run's average is not the initialisation either
    root2 = tmp_path / "run2"
    assert main(["fit", *TINY, *QUIET_VAL, "--model.lr=0.01", "--trainer.max_steps=3", "--trainer.callbacks+=flowzoo.callbacks.EMA",
                 f"--trainer.default_root_dir={root2}", "--trainer.logger=false"]) == 0
    torch.manual_seed(0)  # the CLI's seed: the same initial weights
    from flowzoo.checkpoints import load_checkpoint

    model = load_checkpoint(root2 / "checkpoints/last.ckpt")
    fresh = type(model).from_config(model.config())
    avg = ckpt(root2 / "checkpoints/last.ckpt")
    assert avg["averaging_state"]["n_averaged"] == 3
    assert any(not torch.equal(avg["state_dict"][k], v) for k, v in fresh.state_dict().items() if k in avg["state_dict"])


# --- exact resume --------------------------------------------------------------------------------------------------
def _resume_args(root, record) -> list[str]:
    return [*TINY, "--trainer.max_steps=10", "--trainer.val_check_interval=3", "--trainer.check_val_every_n_epoch=null",
            "--trainer.limit_val_batches=1", "--model.num_val_samples=4", "--model.lr=0.01",
            "--trainer.callbacks+=flowzoo.callbacks.EMA", *checkpointing(4),
            "--trainer.callbacks+=run_helpers.RecordSteps", f"--trainer.callbacks.path={record}",
            f"--trainer.default_root_dir={root}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted 10-step run: (its folder, {step: record})."""
    from run_helpers import read_steps

    folder = tmp_path_factory.mktemp("uninterrupted")
    sys.path.insert(0, str(TESTS))
    try:
        assert main(["fit", *_resume_args(folder / "whole", folder / "whole.jsonl")]) == 0
    finally:
        sys.path.remove(str(TESTS))
    whole = read_steps(folder / "whole.jsonl")
    assert sorted(whole) == list(range(1, 11))
    return folder, whole


@pytest.mark.parametrize("signal_name, stop, resumed_from", [("SIGKILL", 6, 4), ("SIGINT", 3, 3), ("SIGTERM", 3, 3)])
def test_an_interrupted_run_resumed_with_ckpt_path_last_repeats_the_uninterrupted_loss_curve(
        tmp_path, monkeypatch, uninterrupted, signal_name, stop, resumed_from):
    """4 batches per epoch, 10 steps: SIGKILL after step 6 resumes from the periodic save at step 4 (an epoch
    boundary), SIGINT after step 3 stops at step 3 and saves it (mid-epoch), SIGTERM too (exit 143, not a silent 0
    with nothing saved as before); with validation and an EMA running."""
    from run_helpers import read_steps

    monkeypatch.syspath_prepend(str(TESTS))
    whole_folder, whole = uninterrupted

    root, record = tmp_path / "cut", tmp_path / "cut.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "flowzoo", "fit", *_resume_args(root, record),
           "--trainer.callbacks+=run_helpers.InterruptAt", f"--trainer.callbacks.step={stop}", f"--trainer.callbacks.signal_name={signal_name}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    for noise in ("Tip:", "litmodels", "GPU available", "Seed set to"):  # a fresh process: Lightning's notices silenced
        assert noise not in done.stdout + done.stderr, noise
    if signal_name == "SIGKILL":
        assert done.returncode == -9, done.stderr[-2000:]
    elif signal_name == "SIGTERM":
        assert done.returncode == 143 and "training stopped (terminated by SIGTERM) at step 3" in done.stderr, done.stderr[-2000:]
    else:
        assert done.returncode == 0 and "training stopped (interrupted) at step 3" in done.stderr, done.stderr[-2000:]
    assert ckpt(root / "checkpoints/last.ckpt")["global_step"] == resumed_from
    assert main(["fit", *_resume_args(root, record), "--ckpt_path", "last"]) == 0
    cut = read_steps(record)
    assert sorted(cut) == list(range(1, 11))
    for step in range(resumed_from + 1, 11):
        assert cut[step]["rows"] == whole[step]["rows"], f"step {step}: another batch than the uninterrupted run's"
        assert cut[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-6, abs=1e-7), step
        assert cut[step]["weights"] == pytest.approx(whole[step]["weights"], rel=1e-6), step
    final, reference = ckpt(root / "checkpoints/last.ckpt"), ckpt(whole_folder / "whole/checkpoints/last.ckpt")
    for key in ("state_dict", "current_model_state"):
        assert all(torch.allclose(final[key][k], v, rtol=1e-5, atol=1e-7) for k, v in reference[key].items()), key


def test_a_resumed_dmd_run_goes_on_with_its_critic_and_ends_where_the_uninterrupted_run_does(tmp_path):
    """dmd's critic (a trained copy of the teacher, kept outside the state dict) travels in the training checkpoint:
    2 steps, then resumed to 4 (the same cosine length), give the uninterrupted 4-step run's map and critic."""
    from flowzoo.checkpoints.pretrained import CRITIC_KEY

    teacher_root = tmp_path / "teacher"
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=2", f"--trainer.default_root_dir={teacher_root}"]) == 0
    dmd = [*TINY, *QUIET_VAL, "--model.objective=dmd", f"--model.objective.teacher={teacher_root / 'checkpoints/last.ckpt'}",
           "--model.objective.num_generated=4", "--model.objective.gan_weight=1", "--model.sampler=flow_map",
           "--model.lr=0.01", "--model.lr_schedule_steps=4"]
    assert main(["fit", *dmd, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'whole'}"]) == 0
    cut = tmp_path / "cut"
    assert main(["fit", *dmd, "--trainer.max_steps=2", f"--trainer.default_root_dir={cut}"]) == 0
    halfway = ckpt(cut / "checkpoints/last.ckpt")
    assert halfway["global_step"] == 2 and "discriminator.weight" in halfway[CRITIC_KEY]["network"]
    assert main(["fit", *dmd, "--trainer.max_steps=4", f"--trainer.default_root_dir={cut}", "--ckpt_path", "last"]) == 0
    final, reference = ckpt(cut / "checkpoints/last.ckpt"), ckpt(tmp_path / "whole/checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 4
    for what, ours, theirs in (("map", final["state_dict"], reference["state_dict"]),
                               ("critic", final[CRITIC_KEY]["network"], reference[CRITIC_KEY]["network"])):
        assert set(ours) == set(theirs), what
        assert all(torch.allclose(ours[k], v, rtol=1e-5, atol=1e-7) for k, v in theirs.items()), what
    assert not any("critic" in k or "discriminator" in k for k in final["state_dict"])  # never in the weights


def test_every_config_averages_with_the_warm_up_ema():
    import yaml

    root = TESTS.parent
    files = [*sorted((root / "configs").glob("*.yaml")), *sorted((root / "benchmarks" / "study").glob("*.yaml"))]
    assert len(files) >= 10
    for path in files:
        callbacks = (yaml.safe_load(path.read_text())["trainer"].get("callbacks") or [])
        names = [c["class_path"] for c in callbacks]
        assert "flowzoo.callbacks.EMA" in names and not any("EMAWeightAveraging" in n for n in names), path
    assert "EMAWeightAveraging" not in (root / "benchmarks" / "study.py").read_text()


# --- output ------------------------------------------------------------------------------------------------------
def test_the_progress_bar_counts_steps_of_max_steps_not_epoch_minus_two():
    from types import SimpleNamespace

    from flowzoo.progress import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=3000, max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Step" and bar.total_train_batches == 3000
    bar._trainer = SimpleNamespace(max_steps=-1, max_epochs=5)
    assert bar._get_train_description(2).strip() == "Epoch 2/4"


def test_lightning_tips_and_hardware_lines_are_dropped():
    """(A fresh ``flowzoo fit`` process prints none of them: the interrupted-run test checks its output.)"""
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from flowzoo.cli import quiet_lightning

    quiet_lightning()
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        for message in ("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
                        "GPU available: False, used: False", "`Trainer.fit` stopped: `max_steps=3` reached."):
            rank_zero_info(message)
    finally:
        logger.removeHandler(handler)
    assert seen == ["`Trainer.fit` stopped: `max_steps=3` reached."]


def test_the_sampler_splits_each_epoch_between_ranks_and_resumes_mid_epoch():
    from flowzoo.data.sampler import ResumableSampler

    data = list(range(10))
    whole = ResumableSampler(data, batch_size=2, seed=3)
    epoch0 = list(whole)
    whole.set_epoch(1)
    epoch1 = list(whole)
    assert sorted(epoch0) == data and epoch0 != epoch1 and list(ResumableSampler(data, batch_size=2, seed=3)) == epoch0
    resumed = ResumableSampler(data, batch_size=2, seed=3)
    resumed.resume_at(0, 2)  # two batches of epoch 0 done
    assert list(resumed) == epoch0[4:] and list(resumed) == epoch0[4:]  # every pass over the resumed epoch
    resumed.set_epoch(1)
    assert list(resumed) == epoch1  # the next epoch is whole
    ended = ResumableSampler(data, batch_size=2, seed=3)
    ended.resume_at(0, 5)  # the whole epoch done: the next one from its start
    assert ended.epoch == 1 and list(ended) == epoch1
    limited = ResumableSampler(data, batch_size=2, seed=3)
    limited.resume_at(0, 3, limit=3)  # limit_train_batches=3 ended epoch 0 after 3 batches
    assert limited.epoch == 1 and list(limited) == epoch1
    shares = [ResumableSampler.__new__(ResumableSampler) for _ in range(2)]
    for rank, share in enumerate(shares):
        torch.utils.data.DistributedSampler.__init__(share, data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        share.batch_size, share.drop_last_batch, share._skip = 2, False, None
    assert set(shares[0]) | set(shares[1]) == set(data) and not set(shares[0]) & set(shares[1])


def test_step_checkpoints_are_the_newest_runs_in_step_order(tmp_path):
    from flowzoo.runs import step_checkpoints

    for version, names in (("version_0", ["step=900.ckpt"]), ("version_1", ["epoch=1-step=400.ckpt", "step=50.ckpt", "last.ckpt",
                                                                          "step=60-v1.ckpt", "step=x.ckpt"])):
        (tmp_path / version / "checkpoints").mkdir(parents=True)
        for name in names:
            (tmp_path / version / "checkpoints" / name).touch()
    found = step_checkpoints(tmp_path)  # no latest link: the highest version
    assert [(k, p.name) for k, p in found.items()] == [(50, "step=50.ckpt"), (400, "epoch=1-step=400.ckpt")]
    (tmp_path / "latest").symlink_to("version_0")
    assert [p.name for p in step_checkpoints(tmp_path).values()] == ["step=900.ckpt"]  # latest names the newest run
    assert step_checkpoints(tmp_path / "nowhere") == {}


def test_a_run_stopped_before_its_max_steps_is_told_from_a_finished_one(tmp_path, capsys):
    """An interrupted run also writes pretrained/ (at the step it reached): stopped_early says so, and the study
    scripts resume it (--ckpt_path last) instead of using it half-trained, as they do a killed run (a last.ckpt, no
    pretrained/); a finished run is used as it is."""
    from flowzoo.runs import stopped_early
    from helpers import benchmark_script

    study = benchmark_script("study")
    stopped, finished = tmp_path / "stopped", tmp_path / "finished"
    assert stopped_early(stopped) is None and study.resume_flags(stopped, "judge") == []  # nothing there: train
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=100000", "--trainer.max_time=00:00:00:02", *checkpointing(100000),
                 f"--trainer.default_root_dir={stopped}"]) == 0
    assert main(["fit", *TINY, *QUIET_VAL, "--trainer.max_steps=3", f"--trainer.default_root_dir={finished}"]) == 0
    reached = ckpt(stopped / "checkpoints/last.ckpt")["global_step"]
    assert stopped_early(stopped) == (reached, 100000) and stopped_early(finished) is None
    capsys.readouterr()
    assert study.resume_flags(stopped, "judge") == ["--ckpt_path", "last"]
    assert f"stopped at step {reached} of 100000; resumed from its last.ckpt" in capsys.readouterr().out
    assert study.resume_flags(finished, "judge") is None
    shutil.rmtree((stopped / "pretrained").resolve())  # killed before the end of fit wrote it (SIGKILL, SIGTERM): last.ckpt is kept
    assert study.resume_flags(stopped, "judge") == ["--ckpt_path", "last"]
    assert "ended without pretrained/ (killed mid-run); resumed from its last.ckpt" in capsys.readouterr().out
