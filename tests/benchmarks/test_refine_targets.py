"""benchmarks/refine_targets.py end to end on a tiny saved flow (the teacher) and flow map (the student)."""


import pytest
import torch

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.module import FlowLM
from helpers import benchmark_script

DATA = {"name": "markov", "init_args": {"num_states": 16, "num_train": 16, "num_val": 8, "seq_len": 8}}


def _script():
    return benchmark_script("refine_targets")


def test_repairs_of_student_samples_and_of_data_are_scored_per_refine_from(tmp_path):
    tiny = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
    for name, sampler in (("teacher", "euler"), ("student", "flow_map")):
        torch.manual_seed(0)
        model = FlowLM(backbone=tiny, vocab_size=16, sampler=sampler, num_val_samples=0)
        model.data_spec = DATA
        save_pretrained(model, tmp_path / name)
    output = tmp_path / "targets.md"
    argv = ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--refine-from", "0.3", "0.9",
            "--refine-steps", "2", "--num-samples", "6", "--output", str(output)]
    rows = _script().main(argv)
    assert [(r["source"], r["refine_from"]) for r in rows] == [
        ("student one-step", None), ("student one-step", 0.3), ("student one-step", 0.9),
        ("data (validation)", None), ("data (validation)", 0.3), ("data (validation)", 0.9),
    ]
    assert rows[3]["valid_transitions"] == 1.0 and rows[0]["rewritten"] == rows[3]["rewritten"] == 0.0
    assert all(0.0 <= r["rewritten"] <= 1.0 and 0.0 <= r["valid_transitions"] <= 1.0 for r in rows)
    assert "| data (validation) | 0.9 |" in output.read_text()
    with pytest.raises(SystemExit):
        _script().main([*argv[:4], "--refine-from", "1.0", "--output", str(output)])
