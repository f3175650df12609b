"""The benchmark harness: a tiny flow trained for 3 steps on markov, a flowzoo AR judge, outputs and reproducibility."""

import hashlib
import json

import lightning as L
import pytest
import torch
import yaml

from flowzoo.benchmark import BenchmarkConfigError, allocator_peak, headline, load_config, markdown, sampler_grid
from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.cli import main
from flowzoo.data.markov import MarkovData
from flowzoo.errors import UnknownComponentError
from flowzoo.module import FlowLM

SMALL = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32}
DATA = {"num_states": 20, "num_train": 64, "num_val": 32, "seq_len": 12, "batch_size": 16}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A flow trained for 3 steps and an (untrained) causal judge, both written with save_pretrained."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    data = MarkovData(**DATA)
    flow = FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=data.vocab_size, num_val_samples=0, warmup_steps=1)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(flow, data)
    save_pretrained(flow, root / "flow")
    causal_judge(root / "judge", data)
    return root


def causal_judge(path, data, random_seed=None):
    """A causal judge of ``data`` written with save_pretrained: as built (its zero output layer reads every text as
    uniform), or with every weight drawn N(0, 0.3^2) under ``random_seed`` (a judge that tells texts apart)."""
    judge = FlowLM(backbone={"name": "dit", "init_args": {**SMALL, "causal": True}}, vocab_size=data.vocab_size)
    if random_seed is not None:
        torch.manual_seed(random_seed)
        with torch.no_grad():
            for p in judge.parameters():
                p.normal_(0.0, 0.3)
    judge.data_spec = {"name": "markov", "init_args": DATA}
    save_pretrained(judge, path)
    return path


def write_config(root, output, **extra):
    config = {
        "name": "tiny",
        "output": str(output),
        "num_samples": 12,
        "batch_size": 4,
        "repeats": 2,
        "val_batches": 1,
        "judge": str(root / "judge"),
        "models": [{"name": "flow", "checkpoint": str(root / "flow"), "samplers": [{"name": "euler", "steps": [2, 4]}, {"name": "flow_map", "steps": 1}]}],
        **extra,
    }
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_benchmark_writes_results_and_is_reproducible(checkpoints, tmp_path):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["benchmark", "--config", str(write_config(checkpoints, out)), "--threads", "1"]) == 0
        outputs.append(out)
    first, second = (json.loads((o / "results.json").read_text()) for o in outputs)
    rows = first["rows"]
    assert [(r["sampler_name"], r["steps"]) for r in rows] == [("euler", 2), ("euler", 4), ("flow_map", 1), ("data", None)]
    assert [r["nfe"] for r in rows[:3]] == [2, 4, 1]
    for r in rows[:3]:
        assert {"entropy", "gen_ppl", "valid_transitions", "nll", "nll_gap", "distinct"} <= set(r["metrics"])
        assert r["seconds_per_batch"] > 0 and len(r["seconds_timed"]) >= 2
        assert r["tokens_per_second"] == pytest.approx(4 * 12 / r["seconds_per_batch"])
        assert r["peak_memory_mib"] > 0
    assert first["models"]["flow"]["validation"]["loss"] > 0
    assert "ppl_bound" not in first["models"]["flow"]["validation"]  # flow matching CE is no likelihood bound
    # same command, same quality figures (timings differ)
    assert [r["metrics"] for r in first["rows"]] == [r["metrics"] for r in second["rows"]]
    assert first["models"]["flow"]["validation"] == second["models"]["flow"]["validation"]
    md = (outputs[0] / "results.md").read_text()
    assert "| flow | euler | 4 | 4 |" in md and "gen_ppl" in md
    assert (outputs[0] / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_allocator_peak_is_not_hidden_by_frees_of_older_memory():
    assert allocator_peak([50, 30, -60, 40]) == 80
    assert allocator_peak([-100, 50, 30, -20, 40]) == 100  # 100 freed that the window never allocated: the rise after it counts
    assert allocator_peak([]) == 0 and allocator_peak([-5, -5]) == 0


def test_sampler_grid_expands_steps_and_refuses_unknown_names():
    specs = sampler_grid([{"name": "euler", "steps": [8, 16], "init_args": {"decode": "sample"}}, "marginal", "default"])
    assert specs == [
        {"name": "euler", "init_args": {"decode": "sample", "steps": 8}},
        {"name": "euler", "init_args": {"decode": "sample", "steps": 16}},
        {"name": "marginal", "init_args": {}},
        None,
    ]
    with pytest.raises(UnknownComponentError, match="valid sampler names"):
        sampler_grid([{"name": "no_such_sampler", "steps": [1]}])


def test_sampler_grid_refuses_fractional_steps_naming_the_entry():
    for entry in ({"name": "euler", "steps": 2.5}, {"name": "euler", "steps": [4, 2.5]}, {"name": "euler", "init_args": {"steps": 2.5}}):
        with pytest.raises(BenchmarkConfigError, match=r"sampler entry \{'name': 'euler'.*steps must be a whole number, got 2\.5") as err:
            sampler_grid([entry])
        assert "\n" not in str(err.value)
    assert sampler_grid([{"name": "euler", "steps": 2.0}]) == [{"name": "euler", "init_args": {"steps": 2}}]  # a whole float is fine


def test_cpu_memory_is_not_measured_for_samplers_longer_than_the_limit(checkpoints, tmp_path):
    """The profiler keeps an event per op (about 7 MiB a step of a 64 x 64 batch): past cpu_memory_max_steps a row
    says its memory was not measured instead of the measurement exhausting the machine."""
    out = tmp_path / "limited"
    assert main(["benchmark", "--config", str(write_config(checkpoints, out, cpu_memory_max_steps=2)), "--threads", "1"]) == 0
    rows = {(r["sampler_name"], r["steps"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows[("euler", 2)]["peak_memory_mib"] > 0 and rows[("flow_map", 1)]["peak_memory_mib"] > 0
    assert rows[("euler", 4)]["peak_memory_mib"] is None and "cpu_memory_max_steps=2" in rows[("euler", 4)]["memory_method"]
    assert "not measured on the CPU beyond cpu_memory_max_steps=2 steps" in (out / "results.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"checkpoint": "x"}], "cpu_memory_max_steps": -1}))
    with pytest.raises(BenchmarkConfigError, match="cpu_memory_max_steps must be at least 0"):
        load_config(bad)


def test_config_errors_are_clear(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [{"checkpoint": "x"}], "sample_count": 3}))
    with pytest.raises(BenchmarkConfigError, match="unknown keys"):
        load_config(path)
    path.write_text(yaml.safe_dump({"name": "empty"}))
    with pytest.raises(BenchmarkConfigError, match="no models"):
        load_config(path)
    assert main(["benchmark", "--config", str(path)]) == 2
    # two models filed under one name (their rows would merge): an explicit name twice, or two checkpoints' folder names
    for models in ([{"name": "a", "checkpoint": "x"}, {"name": "a", "checkpoint": "y"}],
                   [{"checkpoint": "runs/one/pretrained"}, {"checkpoint": "runs/two/pretrained"}]):
        path.write_text(yaml.safe_dump({"models": models}))
        with pytest.raises(BenchmarkConfigError, match=r"two models share the name '(a|pretrained)'.*give each a 'name' of its own"):
            load_config(path)
    path.write_text(yaml.safe_dump({"models": [{"checkpoint": "runs/one/pretrained"}, {"name": "two", "checkpoint": "runs/two/pretrained"}]}))
    assert [m.get("name") for m in load_config(path)["models"]] == [None, "two"]


def _row(model, sampler, steps, nll, seconds):
    return {"model": model, "sampler_name": sampler, "steps": steps, "nfe": steps, "metrics": {"nll": nll, "entropy": 2.0},
            "seconds_per_batch": seconds, "tokens_per_second": 1.0, "peak_memory_mib": 1.0, "memory_method": "m", "example": "x"}


def test_headline_compares_one_step_map_with_mdlm_at_equal_quality():
    """Stand-in rows: the 1-step map (nll 1.0, 10 ms) against ancestral at 8 (nll 1.3, 40 ms) ... 64 (nll 0.9, 300 ms)."""
    rows = [
        _row("flow map", "flow_map", 1, 1.0, 0.010),
        _row("mdlm", "ancestral", 8, 1.3, 0.040),
        _row("mdlm", "ancestral", 32, 0.99, 0.150),
        _row("mdlm", "ancestral", 64, 0.9, 0.300),
    ]
    config = load_config(None, models=[{"checkpoint": "x"}])
    results = {"rows": rows}
    h = headline(results, config)
    assert h["metric"] == "nll" and h["reference_at_least_as_good"]
    assert h["speedup_vs_baseline"] == pytest.approx(4.0)
    assert h["equal_quality_row"]["steps"] == 32
    assert h["speedup_at_equal_quality"] == pytest.approx(15.0)
    rows[2]["metrics"]["nll"] = rows[3]["metrics"]["nll"] = 1.2  # no MDLM setting reaches the map
    h = headline(results, config)
    assert h["equal_quality_row"] is None and h["speedup_at_equal_quality"] is None
    full = {"name": "t", "rows": rows, "config": config, "length": 8, "judge": None, "headline": h,
            "environment": {"device": "cpu", "threads": 1, "torch": "x", "flowzoo": "y"}, "models": {}}
    assert "No ancestral setting in the grid reaches" in markdown(full)


def test_headline_against_several_named_baselines():
    """MDLM and MDLM + SDTT share the ancestral sampler: each baseline names its model, and each gets its comparison."""
    rows = [
        _row("flow map", "flow_map", 1, 1.0, 0.010),
        _row("MDLM", "ancestral", 8, 1.3, 0.040),
        _row("MDLM", "ancestral", 64, 0.9, 0.300),
        _row("MDLM + SDTT", "ancestral", 4, 1.1, 0.020),
        _row("MDLM + SDTT", "ancestral", 8, 0.95, 0.040),
        _row("Duo + DCD", "uniform_ancestral", 8, 1.2, 0.045),
    ]
    baselines = [{"model": "MDLM", "sampler": "ancestral", "steps": 8}, {"model": "MDLM + SDTT", "sampler": "ancestral", "steps": 8},
                 {"model": "Duo + DCD", "sampler": "uniform_ancestral", "steps": 8}]
    config = load_config(None, models=[{"checkpoint": "x"}], headline={"metric": "nll", "reference": {"sampler": "flow_map", "steps": 1}, "baseline": baselines})
    h = headline({"rows": rows}, config)
    assert [c["baseline"]["model"] for c in h["all"]] == ["MDLM", "MDLM + SDTT", "Duo + DCD"]
    assert h["baseline"]["model"] == "MDLM" and h["equal_quality_row"]["steps"] == 64  # the first comparison, as before
    sdtt = h["all"][1]
    assert sdtt["equal_quality_row"]["steps"] == 8 and sdtt["speedup_at_equal_quality"] == pytest.approx(4.0)  # not MDLM's rows
    assert h["all"][2]["equal_quality_row"] is None
    full = {"name": "t", "rows": rows, "config": config, "length": 8, "judge": None, "headline": h,
            "environment": {"device": "cpu", "threads": 1, "torch": "x", "flowzoo": "y"}, "models": {}}
    text = markdown(full)
    assert "The fastest ancestral setting of MDLM + SDTT at least as good needs 8 steps" in text
    assert "No uniform_ancestral setting in the grid reaches the reference's nll (Duo + DCD)" in text


def test_benchmark_reports_conditional_rows_beside_the_unconditional_ones(checkpoints, tmp_path, capsys):
    out = tmp_path / "cond"
    config = write_config(checkpoints, out, num_samples=8)
    assert main(["benchmark", "--config", str(config), "--threads", "1", "--prompts-from", "validation", "--prompt-len", "4"]) == 0
    results = json.loads((out / "results.json").read_text())
    conditional = results["conditional_rows"]
    assert [(r["sampler_name"], r["steps"], r["prompt_len"]) for r in conditional] == [("euler", 2, 4), ("euler", 4, 4), ("flow_map", 1, 4)]
    for r in conditional:
        assert {"boundary_valid", "inner_valid", "completion_nll", "entropy", "prompt_repeat", "gen_ppl"} <= set(r["metrics"])
        assert r["metrics"]["gen_ppl"] > 1.0
        assert 0.0 <= r["metrics"]["boundary_valid"] <= 1.0
    md = (out / "results.md").read_text()
    assert "## Conditional rows: prompts of 4 tokens (validation), 8 generated" in md and "| flow | flow_map | 1 | 1 |" in md
    capsys.readouterr()
    assert main(["benchmark", "--config", str(config), "--prompts-from", "validation", "--prompt-len", "12"]) == 2
    assert "prompt_len must lie in [1, 12) for sequences of 12, got 12" in capsys.readouterr().err


def test_named_path_splits_where_an_existing_path_follows(tmp_path):
    from flowzoo.benchmark import named_path

    ckpt = tmp_path / "epoch=0-step=50.ckpt"
    ckpt.touch()
    assert named_path(f"tuned, λ=1={ckpt}") == ("tuned, λ=1", str(ckpt))  # '=' on both sides
    assert named_path(f"a={ckpt}") == ("a", str(ckpt))
    assert named_path("hub=org/model") == ("hub", "org/model")  # nothing local: the first '='
    for bad in ("no-separator", "=path", "name="):
        with pytest.raises(ValueError, match="expected NAME=PATH"):
            named_path(bad)


def test_kept_samples_are_rescored_under_another_judge_as_a_run_with_it_would_score_them(checkpoints, tmp_path, capsys):
    """save_samples keeps each row's judge texts; --rescore gives the GenPPL a fresh run under the new judge gives,
    without loading a model, and keeps every other figure as measured."""
    other = causal_judge(tmp_path / "other_judge", MarkovData(**DATA), random_seed=1)
    kept, direct, again, same = (tmp_path / name for name in ("kept", "direct", "again", "same"))
    assert main(["benchmark", "--config", str(write_config(checkpoints, kept, save_samples=True)), "--threads", "1"]) == 0
    assert main(["benchmark", "--config", str(write_config(checkpoints, direct, judge=str(other))), "--threads", "1"]) == 0
    assert (kept / "samples.json.gz").is_file() and not (direct / "samples.json.gz").exists()
    capsys.readouterr()
    assert main(["benchmark", "--rescore", str(kept), "--judge", str(other), "--output", str(again)]) == 0
    assert main(["benchmark", "--rescore", str(kept), "--judge", str(checkpoints / "judge"), "--output", str(same)]) == 0
    first, fresh, rescored, unchanged = (json.loads((d / "results.json").read_text()) for d in (kept, direct, again, same))
    assert len(rescored["rows"]) == len(first["rows"]) == 4  # three samplers and the data row
    for was, new, ref, back in zip(first["rows"], rescored["rows"], fresh["rows"], unchanged["rows"]):
        assert new["metrics"]["gen_ppl"] == pytest.approx(ref["metrics"]["gen_ppl"], rel=1e-6)
        assert new["metrics"]["gen_ppl"] != pytest.approx(was["metrics"]["gen_ppl"], rel=1e-3)  # the judges differ
        assert back["metrics"]["gen_ppl"] == pytest.approx(was["metrics"]["gen_ppl"], rel=1e-6)
        assert {k: v for k, v in new["metrics"].items() if k != "gen_ppl"} == {k: v for k, v in was["metrics"].items() if k != "gen_ppl"}
        assert new["seconds_per_batch"] == was["seconds_per_batch"]  # as measured then
    assert rescored["rescored"]["from"] == str(kept) and rescored["config"]["judge"] == str(other)
    # each table names its judge's weights, so two judges kept at one path (one retrained in place) are told apart
    digest = {j: hashlib.sha256(((j / "model.safetensors") if j.is_dir() else j).read_bytes()).hexdigest()[:12]
              for j in (checkpoints / "judge", other)}
    assert first["judge_digest"] == unchanged["judge_digest"] == digest[checkpoints / "judge"] != digest[other]
    assert rescored["judge_digest"] == digest[other] and rescored["rescored"]["judge_digest"] == digest[checkpoints / "judge"]
    md = (again / "results.md").read_text()
    assert "Re-scored (`flowzoo benchmark --rescore`)" in md
    assert f"measured there under {first['judge']} (weights sha256 {digest[checkpoints / 'judge']}…)" in md
    assert f"Judge: {rescored['judge']} (weights sha256 {digest[other]}…)" in md
    assert (again / "samples.json.gz").read_bytes() == (kept / "samples.json.gz").read_bytes()  # it can be re-scored again


def test_rescore_refuses_what_it_cannot_score(checkpoints, tmp_path, capsys):
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    assert main(["benchmark", "--config", str(write_config(checkpoints, plain, num_samples=4)), "--threads", "1"]) == 0
    assert main(["benchmark", "--config", str(write_config(checkpoints, kept, num_samples=4, save_samples=True)), "--threads", "1"]) == 0
    judge = str(checkpoints / "judge")
    capsys.readouterr()
    assert main(["benchmark", "--rescore", str(plain), "--judge", judge, "--output", str(tmp_path / "o1")]) == 2
    assert "save_samples: true" in capsys.readouterr().err
    assert main(["benchmark", "--rescore", str(tmp_path / "nowhere"), "--judge", judge, "--output", str(tmp_path / "o2")]) == 2
    assert "output folder of a `flowzoo benchmark` run" in capsys.readouterr().err
    assert main(["benchmark", "--rescore", str(kept), "--judge", judge, "--judge-text", "raw", "--output", str(tmp_path / "o3")]) == 2
    assert "judge_text 'decode'" in capsys.readouterr().err
    results = json.loads((kept / "results.json").read_text())
    (kept / "results.json").write_text(json.dumps({**results, "rows": results["rows"][1:]}))  # rows no longer those kept
    assert main(["benchmark", "--rescore", str(kept), "--judge", judge, "--output", str(tmp_path / "o4")]) == 2
    assert "does not match the rows" in capsys.readouterr().err
    (kept / "samples.json.gz").write_bytes(b"not gzip")
    assert main(["benchmark", "--rescore", str(kept), "--judge", judge, "--output", str(tmp_path / "o5")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    for argv in (["--output", str(tmp_path / "o6")], ["--judge", judge], ["--judge", judge, "--output", str(kept)],
                 ["--judge", judge, "--output", str(tmp_path / "o7"), "--num-samples", "3"]):
        with pytest.raises(SystemExit):
            main(["benchmark", "--rescore", str(kept), *argv])
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))  # nothing written by a refusal
