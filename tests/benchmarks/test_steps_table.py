"""benchmarks/steps_table.py on tiny checkpoints trained for 3 steps: mdlm (ancestral), flow (euler), flow map, ar."""

import json
import shlex

import pytest

from flowzoo.checkpoints.pretrained import save_pretrained
from helpers import benchmark_script, markov_trained

SMALL = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}
DATA = {"num_states": 16, "num_train": 48, "num_val": 16, "seq_len": 8, "batch_size": 16}
METHODS = {
    "mdlm": {"path": "masked", "objective": "mdlm", "sampler": "ancestral"},
    "flow": {"path": "linear", "objective": "flow_matching", "sampler": "euler"},
    "flow_map": {"path": "linear", "objective": "lsd", "sampler": "flow_map"},
    "ar": {"path": "autoregressive", "objective": "ar", "sampler": "ar", "causal": True},
}


def _script():
    return benchmark_script("steps_table")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    out = {}
    for name, parts in METHODS.items():
        save_pretrained(markov_trained(parts, DATA, SMALL), root / name)
        out[name] = root / name
    return out


def test_steps_table_for_mdlm_flow_flow_map_and_ar(checkpoints, tmp_path):
    script = _script()
    output = tmp_path / "steps.md"
    argv = [*(f"--checkpoint={name}={path}" for name, path in checkpoints.items()), "--steps", "2", "4",
            "--num-samples", "12", "--batch-size", "8", "--output", str(output)]
    results = script.main(argv)
    rows = [(r["model"], r["sampler_name"], r["steps"], r["nfe"]) for r in results["rows"]]
    assert rows == [
        ("mdlm", "ancestral", 2, rows[0][3]), ("mdlm", "ancestral", 4, rows[1][3]),
        ("flow", "euler", 2, 2), ("flow", "euler", 4, 4),
        ("flow_map", "flow_map", 2, 2), ("flow_map", "flow_map", 4, 4),
        ("ar", "ar", None, DATA["seq_len"]),
        ("data (validation)", "data", None, 0),
    ]
    assert 1 <= rows[0][3] <= 3 and 1 <= rows[1][3] <= 5  # ancestral: at most steps + 1 (noise removal), cache skips
    for r in results["rows"]:
        assert {"valid_transitions", "nll", "nll_gap", "entropy"} <= set(r["metrics"])
    assert results["rows"][-1]["metrics"]["valid_transitions"] == 1.0
    # one fixed seed: the same sample count per row, batches seeded the same way as flowzoo benchmark
    assert results["config"]["num_samples"] == 12 and results["config"]["seed"] == 0

    text = output.read_text()
    assert text.splitlines()[1] == "python benchmarks/steps_table.py " + shlex.join(argv)  # the command, on top
    assert "| mdlm | ancestral | 4 |" in text and "| flow_map | flow_map | 2 | 2 |" in text and "| ar | ar | - |" in text
    assert "valid transitions" in text and "NLL / transition" in text and "NLL − H" in text
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["command"].endswith(shlex.join(argv)) and len(saved["rows"]) == len(rows)
    assert saved["models"]["mdlm"]["validation"]["ppl_bound"] > 1

    again = script.main([*argv[:-1], str(tmp_path / "again.md")])  # same seed, same figures
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in results["rows"]]


def test_checkpoint_names_and_bad_arguments(tmp_path):
    script = _script()
    assert script.parse_checkpoint("mdlm=runs/x/checkpoints/last.ckpt") == ("mdlm", "runs/x/checkpoints/last.ckpt")
    assert script.parse_checkpoint("runs/mdlm_markov/checkpoints/last.ckpt") == ("mdlm_markov", "runs/mdlm_markov/checkpoints/last.ckpt")
    assert script.parse_checkpoint("runs/a=b/model.ckpt") == ("model", "runs/a=b/model.ckpt")
    with pytest.raises(SystemExit):
        script.main(["--checkpoint", "x", "--steps", "0", "--output", str(tmp_path / "t.md")])
    with pytest.raises(SystemExit):
        script.main(["--checkpoint", "x", "--output", str(tmp_path / "missing" / "t.md")])


def test_sampler_options_for_one_checkpoint_or_every_one(checkpoints, tmp_path):
    """--sampler-option NAME:KEY=VALUE sets one checkpoint's sampler option; KEY=VALUE every sampler that has it."""
    script = _script()
    flow_map = checkpoints["flow_map"]
    argv = [f"--checkpoint=plain={flow_map}", f"--checkpoint=churn={flow_map}", f"--checkpoint=flow={checkpoints['flow']}",
            "--sampler-option", "churn:gamma=1.0", "--sampler-option", "decode=sample", "--steps", "3",
            "--num-samples", "8", "--batch-size", "8", "--output", str(tmp_path / "t.md")]
    results = script.main(argv)
    samplers = {r["model"]: r for r in results["rows"]}
    options = {m["name"]: m["samplers"][0]["init_args"] for m in results["config"]["models"]}
    assert options["churn"]["gamma"] == 1.0 and options["plain"].get("gamma", 0.0) == 0.0
    assert options["plain"]["decode"] == options["flow"]["decode"] == "sample"
    assert samplers["churn"]["metrics"] != samplers["plain"]["metrics"]  # fresh noise between the 3 steps
    timed = script.main([*argv[:2], "--sampler-option", "churn:times=[0.0,0.5,1.0]", "--steps", "3", "--num-samples", "8",
                         "--batch-size", "8", "--output", str(tmp_path / "times.md")])
    assert [(r["model"], r["nfe"]) for r in timed["rows"][:-1]] == [("plain", 3), ("churn", 2)]  # given times: one row
    for bad in ("flow:gamma=1.0", "nobody:gamma=1.0", "churn:steps=2", "gamma"):
        with pytest.raises(SystemExit):
            script.main([*argv[:6], "--sampler-option", bad, "--output", str(tmp_path / "bad.md")])


def test_one_step_confidence_reads_the_map_prediction_at_invalid_tokens(checkpoints):
    script = benchmark_script("one_step_confidence")
    out = script.main(["--checkpoint", str(checkpoints["flow_map"]), "--num-samples", "16", "--batch-size", "8"])
    assert 0.0 <= out["valid_transitions"] < 1.0  # 3 training steps: many invalid transitions
    V = DATA["num_states"]
    for mean, median in (out["confidence_in_invalid"], out["confidence_elsewhere"]):
        assert 1.0 / V - 1e-6 <= mean <= 1.0 and 1.0 / V - 1e-6 <= median <= 1.0
