"""benchmarks/merge_results.py: parts of a benchmark over disjoint models merged into one table, the headline
recomputed over every row; parts that are not comparable are refused."""

import json

import pytest

from helpers import benchmark_script

CONFIG = {"num_samples": 8, "batch_size": 4, "seed": 0, "device": "cpu", "warmup": 1}


def _row(model, sampler, steps, nll, seconds):
    return {"model": model, "sampler": {"name": sampler}, "sampler_name": sampler, "sampler_label": sampler, "steps": steps,
            "nfe": steps, "metrics": {"nll": nll}, "seconds_per_batch": seconds, "tokens_per_second": 1.0,
            "peak_memory_mib": 1.0, "memory_method": "m", "example": "a b"}


def _part(name, models, rows, **config):
    return {"name": name, "config": {**CONFIG, **config, "models": [{"name": m} for m in models]}, "environment": {"device": "cpu", "threads": 1, "torch": "t", "flowzoo": "f"},
            "judge": None, "length": 8, "models": {m: {"checkpoint": m, "config": {"objective": {"name": "x"}}, "parameters": 1, "validation": None} for m in models},
            "rows": rows, "conditional_rows": [], "complete": True}


def _write(tmp_path, name, part):
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(part))
    return str(tmp_path / name)


def test_parts_merge_in_config_order_and_the_headline_sees_every_row(tmp_path):
    script = benchmark_script("merge_results")
    data = {**_row("data (validation)", "data", None, 0.5, None), "nfe": 0}
    a = _part("a", ["map", "MDLM"], [_row("MDLM", "ancestral", 8, 2.0, 1.0), _row("map", "flow_map", 1, 1.5, 0.1), data])
    b = _part("b", ["SDTT"], [_row("SDTT", "ancestral", 2, 1.6, 0.3), _row("SDTT", "ancestral", 8, 1.4, 1.0)])
    config = tmp_path / "full.yaml"
    config.write_text(json.dumps({"name": "full", "models": [{"name": n, "checkpoint": n} for n in ("map", "MDLM", "SDTT")],
                                  "headline": {"metric": "nll", "reference": {"sampler": "flow_map", "steps": 1},
                                               "baseline": [{"model": "MDLM", "sampler": "ancestral", "steps": 8},
                                                            {"model": "SDTT", "sampler": "ancestral", "steps": 8}]}}))
    out = tmp_path / "out"
    assert script.main(["--config", str(config), "--part", _write(tmp_path, "a", a), "--part", _write(tmp_path, "b", b), "--output", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["map", "MDLM", "SDTT", "SDTT", "data (validation)"]
    assert set(merged["models"]) == {"map", "MDLM", "SDTT"}
    sdtt = merged["headline"]["all"][1]
    assert sdtt["baseline"]["model"] == "SDTT" and sdtt["equal_quality_row"]["steps"] == 8  # the part-b row at 1.4 <= 1.5
    mdlm = merged["headline"]["all"][0]
    assert mdlm["equal_quality_row"] is None and mdlm["reference_at_least_as_good"]  # MDLM's 2.0 does not reach 1.5
    text = (out / "results.md").read_text()
    assert "# Benchmark: full" in text and "SDTT" in text


@pytest.mark.parametrize("change", [{"num_samples": 16}, {"seed": 1}])
def test_parts_that_are_not_comparable_are_refused(tmp_path, capsys, change):
    script = benchmark_script("merge_results")
    a = _part("a", ["map"], [_row("map", "flow_map", 1, 1.5, 0.1)])
    b = _part("b", ["SDTT"], [_row("SDTT", "ancestral", 8, 1.4, 1.0)], **change)
    config = tmp_path / "full.yaml"
    config.write_text(json.dumps({"name": "full", "models": [{"name": "map", "checkpoint": "map"}]}))
    assert script.main(["--config", str(config), "--part", _write(tmp_path, "a", a), "--part", _write(tmp_path, "b", b), "--output", str(tmp_path / "o")]) == 2
    assert "not comparable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_part_that_stopped_early_is_refused_unless_allowed_and_then_lists_what_it_did_not_run(tmp_path, capsys):
    script = benchmark_script("merge_results")
    a = _part("a", ["map"], [_row("map", "flow_map", 1, 1.5, 0.1)])
    b = _part("b", ["Duo"], [_row("Duo", "uniform_ancestral", 8, 1.4, 1.0)])
    b["complete"] = False
    b["config"]["models"] = [{"name": "Duo", "samplers": [{"name": "uniform_ancestral", "steps": [8, 1024]}]}]
    config = tmp_path / "full.yaml"
    config.write_text(json.dumps({"name": "full", "models": [{"name": "map", "checkpoint": "map"}]}))
    parts = ["--part", _write(tmp_path, "a", a), "--part", _write(tmp_path, "b", b)]
    assert script.main(["--config", str(config), *parts, "--output", str(tmp_path / "o")]) == 2
    assert "did not finish" in capsys.readouterr().err
    assert script.main(["--config", str(config), *parts, "--output", str(tmp_path / "o"), "--allow-partial"]) == 0
    text = (tmp_path / "o" / "results.md").read_text()
    assert "## Not run" in text and "Duo uniform_ancestral 1024" in text and "uniform_ancestral 8" not in text.split("## Not run")[1]


def test_a_model_split_over_parts_merges_once_and_a_row_measured_twice_is_refused(tmp_path, capsys):
    """A later part may finish the rows an earlier one stopped before (same checkpoint); the earlier part's "not run"
    list then drops them."""
    script = benchmark_script("merge_results")
    a = _part("a", ["MDLM"], [_row("MDLM", "ancestral", 8, 2.0, 1.0)])
    a["complete"] = False
    a["config"]["models"] = [{"name": "MDLM", "samplers": [{"name": "ancestral", "steps": [8, 1024]}]}]
    b = _part("b", ["MDLM"], [_row("MDLM", "ancestral", 1024, 1.2, 9.0)])
    config = tmp_path / "full.yaml"
    config.write_text(json.dumps({"name": "full", "models": [{"name": "MDLM", "checkpoint": "MDLM"}]}))
    parts = ["--part", _write(tmp_path, "a", a), "--part", _write(tmp_path, "b", b)]
    assert script.main(["--config", str(config), *parts, "--output", str(tmp_path / "o"), "--allow-partial"]) == 0
    merged = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [(r["model"], r["steps"]) for r in merged["rows"]] == [("MDLM", 8), ("MDLM", 1024)]
    assert merged["not_run"] == [] and [m["name"] for m in merged["config"]["models"]] == ["MDLM"]
    assert "## Not run" not in (tmp_path / "o" / "results.md").read_text()
    twice = _part("c", ["MDLM"], [_row("MDLM", "ancestral", 1024, 1.3, 9.0)])
    assert script.main(["--config", str(config), *parts, "--part", _write(tmp_path, "c", twice), "--output", str(tmp_path / "o2"),
                        "--allow-partial"]) == 2
    assert "the row MDLM ancestral 1024 is in more than one part" in capsys.readouterr().err
    other = _part("d", ["MDLM"], [_row("MDLM", "ancestral", 16, 1.3, 9.0)])
    other["models"]["MDLM"]["checkpoint"] = "elsewhere"
    assert script.main(["--config", str(config), "--part", _write(tmp_path, "d", other), *parts, "--output", str(tmp_path / "o3"),
                        "--allow-partial"]) == 2
    assert "with different checkpoints" in capsys.readouterr().err
