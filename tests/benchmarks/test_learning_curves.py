"""benchmarks/learning_curves.py: the FLOPs estimate, the checkpoint schedule it asks Lightning for, its table and
plot, its refusals, and (slow) a --tiny run end to end on the mirror language."""

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("learning_curves", ROOT / "benchmarks" / "learning_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


curves = _script()


def test_flops_are_six_n_t_k_and_distillation_adds_the_teachers_forward():
    assert curves.training_flops(1000, 64 * 32, 10) == 6 * 1000 * 2048 * 10
    assert curves.training_flops(1000, 2048, 10, self_condition=True) == 8 * 1000 * 2048 * 10
    assert curves.distillation_flops(1000, 3000, 2048, 5) == (6 * 1000 + 2 * 3000) * 2048 * 5
    assert curves.distillation_flops(1000, 3000, 2048, 5, teacher_passes=2) == (6 * 1000 + 4 * 3000) * 2048 * 5
    assert curves.teacher_self_conditioned({"objective": {"init_args": {"teacher_self_condition": True}}})
    assert not curves.teacher_self_conditioned({"objective": {"class_path": "flowzoo.objectives.Distill"}})
    assert curves.tokens_per_step({"data": {"name": "mirror", "init_args": {"batch_size": 64, "seq_len": 32}}}) == 2048
    with pytest.raises(SystemExit, match="no data batch size"):
        curves.tokens_per_step({"data": None})


def test_dmd_adds_its_generator_reads_and_critic_to_the_distillation_step():
    distill = curves.distillation_flops(1000, 3000, 2048, 5)
    assert curves.dmd_flops(1000, 3000, 2048, 32 * 32, 5) == distill + (6 * 1000 + 10 * 3000) * 1024 * 5
    assert curves.dmd_flops(1000, 3000, 2048, 1024, 5, critic_steps=2) == distill + (8 * 1000 + 16 * 3000) * 1024 * 5
    data = {"init_args": {"batch_size": 64, "seq_len": 32}}
    assert curves.dmd_flops(1000, 3000, 2048, 1024, 5, gan=True) == distill + (6 * 1000 + 26 * 3000) * 1024 * 5  # + (4 + 12) N_t
    assert curves.dmd_setting({"objective": {"init_args": {"num_generated": 32, "critic_steps": 2}}, "data": data}) == (32, 2, False, 1.0, 0.0)
    assert curves.dmd_setting({"objective": {"init_args": {"num_generated": 0, "gan_weight": 1.0}}, "data": data}) == (64, 1, True, 1.0, 0.0)  # 0: the batch
    # a multi-step generator: k̄ - 1 gradient-free jumps a draw (fresh draws of later critic steps too), and the paired
    # regression's forward and backward on its rows: [1, 4] over 32 rows is 16 one-step and 16 four-step samples
    multi = curves.dmd_setting({"objective": {"init_args": {"num_generated": 32, "generator_steps": [1, 4], "critic_steps": 2,
                                                            "step_regression_weight": 1.0}}, "data": data})
    assert multi == (32, 2, False, 2.5, 0.5)
    assert curves.dmd_flops(1000, 3000, 2048, 1024, 5, 2, 1, False, 2.5, 0.5) == distill + (
        (6 + 2 * 1.5 + 2 * 2.5 + 3) * 1000 + 16 * 3000) * 1024 * 5
    uneven = curves.dmd_setting({"objective": {"init_args": {"num_generated": 5, "generator_steps": [1, 2, 4]}}, "data": data})
    assert uneven.mean_generator_steps == pytest.approx((1 + 1 + 2 + 2 + 4) / 5) and uneven.regressed_fraction == 0  # DMD's blocks
    with pytest.raises(SystemExit, match="score_self_condition"):
        curves.dmd_setting({"objective": {"init_args": {"score_self_condition": True}}, "data": data})


def test_fit_config_checkpoints_every_k_steps_and_keeps_every_one(tmp_path):
    path = curves.fit_config("mirror", 3000, 500, tmp_path)
    config = yaml.safe_load(path.read_text())
    assert config["trainer"]["max_steps"] == 3000 and config["trainer"]["val_check_interval"] == 500
    kinds = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert kinds == ["flowzoo.callbacks.EMA", *["lightning.pytorch.callbacks.ModelCheckpoint"] * 2]  # the study's EMA kept
    points, last = (c["init_args"] for c in config["trainer"]["callbacks"][1:])
    assert points["every_n_train_steps"] == 500 and points["save_top_k"] == -1 and points["filename"] == "{step}"
    assert not points["save_last"] and last["save_last"] and last["save_top_k"] == 0 and last["every_n_train_steps"] == 250
    assert config["model"]["num_val_samples"] == 0 and config["data"]["class_path"] == "flowzoo.data.mirror.MirrorData"
    single = yaml.safe_load(curves.fit_config("mirror", 400, 200, tmp_path).read_text())["trainer"]["callbacks"][1:]
    assert len(single) == 1 and single[0]["init_args"]["save_last"]  # last.ckpt as often as the points: one callback
    tuned = yaml.safe_load(curves.fit_config("mirror", 400, 200, tmp_path, ema_decay=0.99).read_text())["trainer"]["callbacks"]
    assert [c["init_args"].get("decay") for c in tuned] == [0.99, None]  # a fine-tune's average, beside the checkpoints


def test_last_ckpt_is_written_at_the_largest_divisor_of_the_points_cadence_up_to_250_steps():
    assert [curves.last_every(k) for k in (2500, 1500, 600, 250, 97, 2)] == [250, 250, 200, 250, 97, 2]
    assert curves.last_every(6, most=4) == 3 and curves.last_every(7, most=4) == 1


def test_curve_points_are_the_steps_on_the_grid_not_where_a_stopped_run_saved(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (2500, 5000, 6318, 7400):  # 6318: a SIGTERM's save; 7400: the budget, off the grid
        (folder / f"step={step}.ckpt").write_text("")
    assert list(curves.curve_points(tmp_path / "run", 7400, 2500)) == [2500, 5000, 7400]


@pytest.mark.slow
def test_a_killed_curves_run_keeps_last_ckpt_between_points_and_resumes_without_a_versioned_copy(tmp_path):
    """Points every 6 steps, last.ckpt every 3: SIGKILL after step 4 leaves last.ckpt at step 3 (before: none, the
    first point being at 6, so the run started over). Resumed under last.ckpt every 2 (another callback, as when a
    run started under an older config resumes): last.ckpt follows to the end (before: Lightning's version counter
    wrote last-v1.ckpt and last.ckpt stayed at step 3)."""
    import os
    import subprocess
    import sys

    import torch

    out = tmp_path / "mirror_flow"
    tiny = curves.study.TINY_TRAIN + curves.study.TINY_DATA["mirror"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONSAFEPATH": "1"}

    def fit(*extra):
        return subprocess.run(curves.study.flowzoo("fit", "--config", str(out / "fit.yaml"), f"--trainer.default_root_dir={out}",
                                                   *tiny, *extra), env=env, capture_output=True, text=True, timeout=300)

    def step_of(name):
        return torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=False)["global_step"]

    curves.fit_config("mirror", 6, 6, out, last_most=3)
    killed = fit("--trainer.callbacks+=run_helpers.InterruptAt", "--trainer.callbacks.step=4", "--trainer.callbacks.signal_name=SIGKILL")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert step_of("last.ckpt") == 3 and curves.curve_points(out, 6, 6) == {}
    curves.fit_config("mirror", 6, 6, out, last_most=2)
    resumed = fit("--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert step_of("last.ckpt") == 6 and list(curves.curve_points(out, 6, 6)) == [6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt", "step=6.ckpt"]


def test_step_checkpoints_are_read_by_step(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("step=1000.ckpt", "step=500.ckpt", "last.ckpt", "step=x.ckpt"):
        (folder / name).write_text("")
    assert list(curves.step_checkpoints(tmp_path / "run")) == [500, 1000]
    assert curves.step_checkpoints(tmp_path / "missing") == {}


def test_a_run_is_resumed_only_under_its_own_budget(tmp_path):
    """The learning rate decays to the run's max_steps: a larger --budget must not silently re-warm a finished run."""
    out = tmp_path / "flow"
    curves.check_budget(out, 2400)  # nothing trained yet
    curves.fit_config("mirror", 2400, 600, out)
    (out / "checkpoints").mkdir()
    curves.check_budget(out, 2400)  # no last.ckpt: nothing to resume
    (out / "checkpoints" / "last.ckpt").write_text("")
    curves.check_budget(out, 2400)  # an interrupted run under the same budget resumes
    with pytest.raises(SystemExit, match="trained with a budget of 2400 steps.*another --runs folder"):
        curves.check_budget(out, 4800)


def test_a_run_is_reused_or_resumed_only_under_the_flags_it_was_trained_with(tmp_path):
    """An ablation pointed at the baseline's --runs must not be read from the baseline's models."""
    out = tmp_path / "flow"
    curves.study.check_flags(out, ["--seed_everything=1"])  # nothing trained yet
    curves.study.record_flags(out, ["--data.init_args.tokenizer=bpe", "--seed_everything=1"])
    curves.study.check_flags(out, ["--data.init_args.tokenizer=bpe", "--seed_everything=1"])
    with pytest.raises(SystemExit, match=r"trained with other flags .*flags.yaml\): \['--seed_everything=1'\] there, "
                                         r"\['--seed_everything=2'\] here\. Use another --runs folder"):
        curves.study.check_flags(out, ["--data.init_args.tokenizer=bpe", "--seed_everything=2"])
    with pytest.raises(SystemExit, match=r"none there, \['--model.lr=1'\] here"):
        curves.study.check_flags(out, ["--data.init_args.tokenizer=bpe", "--seed_everything=1", "--model.lr=1"])
    with pytest.raises(SystemExit, match=r"in another order"):
        curves.study.check_flags(out, ["--seed_everything=1", "--data.init_args.tokenizer=bpe"])
    (tmp_path / "old").mkdir()
    curves.study.check_flags(tmp_path / "old", ["--model.lr=1"])  # a run from before the record: taken as it is
    judge = tmp_path / "judge"  # benchmarks/study.py's judge: one of characters is not reused for BPE tokens
    curves.study.record_flags(judge, ["--trainer.max_steps=2000", "--trainer.precision=bf16-mixed"])
    args = argparse.Namespace(judge=None, tiny=False, judge_steps=2000)
    with pytest.raises(SystemExit, match=r"none there, \['--data.init_args.tokenizer=bpe'\] here"):
        curves.study.train_judge("shakespeare", judge, args, ["--data.init_args.tokenizer=bpe"])


def test_an_extended_run_starts_from_the_sources_last_checkpoint_before_its_budget_and_links_the_earlier_ones(tmp_path):
    source, out = tmp_path / "short" / "mdlm", tmp_path / "long" / "mdlm"
    with pytest.raises(SystemExit, match=r"no step checkpoint before step 48000 in .*short/mdlm to continue from \(it has none\)"):
        curves.extension_start(source, 48000)
    (source / "checkpoints").mkdir(parents=True)
    for step in (12000, 24000):
        (source / "checkpoints" / f"step={step}.ckpt").write_text(str(step))
    assert curves.extension_start(source, 48000) == (24000, (source / "checkpoints" / "step=24000.ckpt").resolve())
    assert curves.extension_start(source, 24000)[0] == 12000  # the source's own budget: its last step is not before it
    with pytest.raises(SystemExit, match=r"before step 12000 .*\(there are steps \[12000, 24000\]\)"):
        curves.extension_start(source, 12000)
    (out / "version_0" / "checkpoints").mkdir(parents=True)
    (out / "version_0" / "checkpoints" / "step=36000.ckpt").write_text("36000")
    curves.link_extended_points(source, out, 24000)
    curves.link_extended_points(source, out, 24000)  # again (a finished run read a second time): no error, no copies
    assert {k: p.read_text() for k, p in curves.curve_points(out, 48000, 12000).items()} == {12000: "12000", 24000: "24000", 36000: "36000"}
    assert (out / "version_0" / "checkpoints" / "step=24000.ckpt").is_symlink()
    with pytest.raises(SystemExit, match=r"--extend names the --runs folder itself"):
        curves.main(["--data", "mirror", "--tiny", "--runs", str(tmp_path / "same"), "--extend", str(tmp_path / "same"),
                     "--output", str(tmp_path / "out")])


def test_bad_options_are_refused_in_one_line(capsys):
    for argv, message in ((["--methods", "flow,sedd"], "unknown methods ['sedd']"),
                          (["--train-flag", "judge:--model.lr=1"], "--train-flag expects METHOD:--flag"),
                          (["--data-flag=--model.lr=1"], "--data-flag expects --data"),
                          (["--every", "10", "--budget", "5"], "--every at most --budget"),
                          (["--euler-gamma", "1.5"], "--euler-gamma must lie in [0, 1], got 1.5"),
                          (["--score-at", "2500,x"], "--score-at expects comma-separated steps (2500,5000), got '2500,x'"),
                          (["--distill-at", "5k"], "--distill-at expects comma-separated steps (2500,5000), got '5k'")):
        with pytest.raises(SystemExit):
            curves.parse(argv)
        assert message in capsys.readouterr().err
    flags = curves.parse(["--train-flag", "all:--seed_everything=1", "--train-flag", "flow_map:--model.lr=0.001"]).train_flags
    assert flags == [("all", "--seed_everything=1"), ("flow_map", "--model.lr=0.001")]
    chosen = curves.parse(["--score-at", "5000,2500,5000", "--distill-at", "7500"])
    assert (chosen.score_at, chosen.distill_at) == ([2500, 5000], [7500])


def test_the_flows_cache_name_carries_its_euler_options_and_the_others_do_not():
    name = lambda method, *argv: curves.score_name(method, 1500, curves.parse(list(argv)))  # noqa: E731
    assert name("flow") == "flow@1500" and name("mdlm", "--euler-gamma", "0.3") == "mdlm@1500"
    assert name("flow", "--euler-gamma", "0.3") == "flow@1500_gamma-0.3"
    assert name("flow", "--euler-grid", "uniform", "--euler-gamma", "1") == "flow@1500_grid-uniform_gamma-1.0"


def results():
    point = {"method": "flow", "train_step": 500, "distill_steps": None, "nfe": 128, "parameters": 10, "validation": None, "example": ""}
    return {"command": "python benchmarks/learning_curves.py --data mirror", "data": "mirror", "judge": None, "num_samples": 8, "seed": 0,
            "device": "cpu", "reference": {"valid_sequences": 1.0, "pair_match": 1.0, "nll": 0.4, "entropy": 2.4},
            "points": [{**point, "series": "flow, euler 128", "flops": 2e9, "metrics": {"valid_sequences": 0.5, "pair_match": 0.9, "nll": 3.0, "entropy": 2.3}},
                       {**point, "series": "flow, euler 128", "flops": 1e9, "train_step": 250,
                        "metrics": {"valid_sequences": 0.25, "pair_match": 0.8, "nll": 4.0, "entropy": 2.2}}]}


def test_judge_paths_print_relative_to_the_repository_and_keep_their_links(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "ROOT", tmp_path)
    (tmp_path / "judge" / "version_0").mkdir(parents=True)
    (tmp_path / "judge" / "pretrained").symlink_to(tmp_path / "judge" / "version_0")
    assert curves.shown_path(tmp_path / "judge" / "pretrained") == "judge/pretrained"  # the link as named
    assert curves.shown_path(Path("/elsewhere/judge")) == "/elsewhere/judge"  # outside the repository: as given


def test_table_orders_each_series_by_flops_and_states_the_formula(tmp_path):
    text = curves.table(results())
    assert "6·N·B·L·k" in text and "(6·N_student + 2·N_teacher)·B·L·d" in text
    assert "judge_text: decode" in text and "judge_eos: all" in text and "the path's eps (1e-3)" in text  # the conventions
    rows = [line for line in text.splitlines() if line.startswith("| flow")]
    assert [r.split("|")[2].strip() for r in rows] == ["250", "500"]
    assert "| data (validation) |" in text and "judge: -." in text
    judged = curves.table({**results(), "judge": "runs/j/pretrained", "judge_digest": "0123456789ab"})
    assert "judge: runs/j/pretrained (weights sha256 0123456789ab…)." in judged  # which judge, not only where it was
    assert curves.plot(results(), tmp_path / "c.png").stat().st_size > 0


def _goal_results(data, flow, mdlm, entropy=2.0):
    """Points of flow Euler-128 and MDLM-128: ``flow`` / ``mdlm`` are [(flops, value)] of ``data``'s primary metric."""
    metric = curves.PRIMARY[data][0]
    point = {"train_step": 0, "distill_steps": None, "nfe": 128, "parameters": 10, "validation": None, "example": ""}
    points = [{**point, "series": "flow, euler 128", "method": "flow", "steps": 128, "flops": f, "metrics": {metric: v, "entropy": entropy}}
              for f, v in flow]
    points += [{**point, "series": "MDLM, ancestral 128", "method": "mdlm", "steps": 128, "flops": f, "metrics": {metric: v}} for f, v in mdlm]
    return {"data": data, "reference": {"entropy": 2.5}, "points": points}


def test_goals_read_the_other_curve_at_equal_flops_and_find_the_compute_it_needs():
    rows = curves.goals(_goal_results("mirror", flow=[(1e9, 0.8), (2e9, 0.9)], mdlm=[(1e9, 0.7), (4e9, 0.9)]))
    assert [r["series"] for r in rows] == [("flow", 128)] * 2  # no flow-map points: no rows for the second goal
    first, second = rows
    assert first["other_at_equal_flops"] == pytest.approx(0.7) and first["gap"] == pytest.approx(0.1)
    assert second["other_at_equal_flops"] == pytest.approx(0.8)  # half-way in log FLOPs from 1e9 to 4e9
    assert first["other_reaches_at"] == pytest.approx(2e9) and first["compute_ratio"] == pytest.approx(0.5) and not first["reach_bounded"]
    assert second["other_reaches_at"] == pytest.approx(4e9) and second["compute_ratio"] == pytest.approx(0.5)
    assert first["entropy_vs_data"] == pytest.approx(2.0 / 2.5 - 1)


def test_goals_on_text_compare_genppl_as_a_ratio_and_say_when_out_of_range():
    rows = curves.goals(_goal_results("shakespeare", flow=[(1e9, 100.0), (8e9, 60.0)], mdlm=[(1e9, 50.0), (2e9, 40.0)]))
    first, last = rows
    assert first["gap"] == pytest.approx(2.0) and first["other_reaches_at"] == 1e9 and first["reach_bounded"]  # at most 1e9
    assert last["compute_ratio"] == pytest.approx(8.0) and last["reach_bounded"]  # at least 8x
    assert last["other_at_equal_flops"] is None and last["gap"] is None  # 8e9 is past MDLM's last checkpoint
    near = curves.goals(_goal_results("shakespeare", flow=[(2.02e9, 45.0)], mdlm=[(1e9, 50.0), (2e9, 40.0)]))[0]
    assert near["other_at_equal_flops"] == pytest.approx(40.0)  # within the 2 % tolerance: MDLM's last checkpoint
    never = curves.goals(_goal_results("shakespeare", flow=[(2e9, 30.0)], mdlm=[(1e9, 50.0), (2e9, 40.0)]))[0]
    assert never["other_reaches_at"] is None and never["gap"] == pytest.approx(0.75)
    text = curves.goals_table({**_goal_results("shakespeare", flow=[(1e9, 100.0)], mdlm=[(1e9, 50.0)]), "num_samples": 1})
    assert "**Goals at equal training FLOPs** (gen_ppl, lower is better)" in text
    assert "| flow 128 | MDLM 128 | 1.000e+09 | 100 | 50 | 2 | ≤ 1.000e+09 | ≥ 1 | -20.0 % |" in text


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    """Trains flow, MDLM, AR (4 steps, a checkpoint every 2), distils a map from each flow checkpoint, scores them."""
    out = curves.main(["--data", "mirror", "--tiny", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out")])
    series = {(p["series"], p["train_step"]) for p in out["points"]}
    assert {("flow, euler 4", 2), ("flow, euler 4", 4), ("AR", 4), ("MDLM, ancestral 2", 2), ("flow map, flow_map 1", 2),
            ("flow map, flow_map 2", 4)} <= series
    flow = {p["train_step"]: p["flops"] for p in out["points"] if p["series"] == "flow, euler 4"}
    maps = {p["train_step"]: p["flops"] for p in out["points"] if p["series"] == "flow map, flow_map 1"}
    assert flow[4] == pytest.approx(2 * flow[2]) and maps[2] > flow[2] and maps[4] - flow[4] == pytest.approx(maps[2] - flow[2])
    assert out["reference"]["valid_sequences"] == 1.0
    assert json.loads((tmp_path / "out" / "curves.json").read_text())["points"] == json.loads(json.dumps(out["points"], default=str))
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    scores = tmp_path / "runs" / "mirror" / "scores" / "n8_seed0"
    kept = {f.name: f.stat().st_mtime_ns for f in scores.iterdir()}
    churned = curves.main(["--data", "mirror", "--tiny", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out2"), "--euler-gamma", "0.5"])
    assert {p["series"] for p in churned["points"] if p["method"] == "flow"} == {"flow, euler gamma=0.5 4"}
    assert {f.name for f in scores.iterdir()} - set(kept) == {"flow@2_gamma-0.5.json", "flow@4_gamma-0.5.json"}
    assert all(scores.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in kept.items())  # the rest read from the cache
    chosen = curves.main(["--data", "mirror", "--tiny", "--methods", "mdlm", "--score-at", "4", "--seed", "1",
                          "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out3")])
    assert {p["train_step"] for p in chosen["points"]} == {4}  # the 2-step checkpoint is neither sampled nor scored
    assert sorted(f.name for f in (scores.parent / "n8_seed1_disjoint").iterdir()) == ["data.json", "mdlm@4.json"]  # not seed + b's
    with pytest.raises(SystemExit, match=r"mdlm was trained with other flags .* none there, \['--model.lr=0.5'\] here"):
        curves.main(["--data", "mirror", "--tiny", "--methods", "mdlm", "--train-flag", "mdlm:--model.lr=0.5",
                     "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out3")])  # an ablation on the baseline's runs
    tuned = curves.main(["--data", "mirror", "--tiny", "--methods", "flow_map_dmd", "--distill-at", "4",
                         "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out4")])
    assert {p["series"] for p in tuned["points"]} == {"flow map + dmd, flow_map 1", "flow map + dmd, flow_map 2"}
    point = tuned["points"][0]
    assert (point["train_step"], point["distill_steps"], point["dmd_steps"]) == (4, 2, 2)
    facts = curves.model_facts(tmp_path / "runs" / "mirror" / "flow_map_dmd_from_4" / "checkpoints" / "step=2.ckpt")  # the points' callback kept
    ran = yaml.safe_load((tmp_path / "runs" / "mirror" / "flow_map_dmd_from_4" / "latest" / "config.yaml").read_text())["trainer"]["callbacks"]
    assert [c["init_args"]["decay"] for c in ran if c["class_path"].endswith(".EMA")] == [0.99]  # the fine-tune's average, once
    started = facts["config"]["objective"]["init_args"]
    assert started["init_from"].endswith("flow_map_from_4/version_0/checkpoints/step=2.ckpt") and started["teacher"].endswith("step=4.ckpt")
    setting = curves.dmd_setting(facts["config"])
    assert setting[2:] == (False, 1.0, 0.0) and point["flops"] == pytest.approx(
        maps[4] + curves.dmd_flops(facts["parameters"], facts["parameters"], 16 * 32, setting.generated * 32, 2, setting.critic_steps))
    assert "+ 2 dmd" in (tmp_path / "out4" / "curves.md").read_text() and (scores / "flow_map_dmd@4+2+2.json").is_file()
    with pytest.raises(SystemExit, match=r"--score-at \[3\]: no mdlm checkpoint at those steps \(there are \[2, 4\]\)"):
        curves.main(["--data", "mirror", "--tiny", "--methods", "mdlm", "--score-at", "3", "--runs", str(tmp_path / "runs")])
    # MDLM continued from its 4-step run to 8 steps: steps 5 to 8 trained on the 8-step schedule, 2 and 4 the source's
    # (warm-up 1 step, so that the rate at step 6 is the cosine's: 8 steps' differs from 4 steps' floor)
    extended = curves.main(["--data", "mirror", "--tiny", "--methods", "mdlm", "--budget", "8", "--extend", str(tmp_path / "runs"),
                            "--runs", str(tmp_path / "runs8"), "--output", str(tmp_path / "out5"),
                            "--train-flag", "mdlm:--model.warmup_steps=1"])
    mdlm = {p["train_step"]: p["flops"] for p in extended["points"] if p["series"] == "MDLM, ancestral 2"}
    assert sorted(mdlm) == [2, 4, 6, 8] and mdlm[8] == pytest.approx(4 * mdlm[2])
    source = curves.step_checkpoints(tmp_path / "runs" / "mirror" / "mdlm")
    continued = curves.step_checkpoints(tmp_path / "runs8" / "mirror" / "mdlm")
    folder = continued[6].parent
    assert [(folder / f"step={k}.ckpt").is_symlink() for k in (2, 4, 6, 8)] == [True, True, False, False]  # resumed, not retrained
    assert continued[2] == source[2] and continued[4] == source[4]
    import torch

    from flowzoo.module import lr_factor

    state = torch.load(continued[6], map_location="cpu", weights_only=False)
    hparams = state["hyper_parameters"]
    rate = {total: hparams["lr"] * lr_factor(6, hparams["warmup_steps"], total, "cosine", hparams["min_lr_ratio"]) for total in (4, 8)}
    assert hparams["warmup_steps"] == 1 and rate[8] > 1.5 * rate[4]
    assert state["global_step"] == 6 and state["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(rate[8])  # the longer schedule's


def test_scores_are_filed_by_the_judges_weights_not_its_path(tmp_path):
    """A judge retrained in place gets a new folder (its old scores are not read back as its); the same weights
    elsewhere share one; no judge (markov, mirror) keeps the plain folder."""
    args = curves.parse(["--data", "shakespeare", "--num-samples", "256"])
    judge, copy = tmp_path / "judge" / "pretrained", tmp_path / "copy"
    judge.mkdir(parents=True)
    copy.mkdir()
    (judge / "model.safetensors").write_bytes(b"weights one")
    (copy / "model.safetensors").write_bytes(b"weights one")
    first = curves.score_folder(tmp_path / "runs", args, judge)
    assert first.parent == tmp_path / "runs" / "scores"
    assert first.name == "n256_seed0_judge-" + hashlib.sha256(b"weights one").hexdigest()[:12]  # the digest the tables print
    assert curves.score_folder(tmp_path / "runs", args, copy) == first
    (judge / "model.safetensors").write_bytes(b"weights two")  # retrained at the same path
    assert curves.score_folder(tmp_path / "runs", args, judge) != first
    assert curves.score_folder(tmp_path / "runs", args, Path("gpt2")) != curves.score_folder(tmp_path / "runs", args, Path("gpt2-medium"))
    assert curves.score_folder(tmp_path / "runs", args, None).name == "n256_seed0"
    resampled = curves.parse(["--data", "mirror", "--num-samples", "256", "--seed", "1"])
    assert curves.score_folder(tmp_path / "runs", resampled, None).name == "n256_seed1_disjoint"  # not the seed + b draws' folder
