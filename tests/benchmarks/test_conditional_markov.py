"""benchmarks/conditional_markov.py end to end: two labelled sets of tiny saved checkpoints (trained with and without
condition_share) side by side in one table, with their unconditional figures."""

from pathlib import Path

import pytest
import torch

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.module import FlowLM
from helpers import benchmark_script

DATA = {"name": "markov", "init_args": {"num_states": 16, "num_train": 16, "num_val": 8, "seq_len": 8}}
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


def _script():
    return benchmark_script("conditional_markov")


def _save(folder: Path, objective: str, share: float, sampler: str, data=DATA) -> None:
    torch.manual_seed(0)
    model = FlowLM(backbone=TINY, vocab_size=16, sampler=sampler, num_val_samples=0,
                   objective={"name": objective, "init_args": {"condition_share": share}})
    model.data_spec = data
    save_pretrained(model, folder)


def test_two_sets_of_checkpoints_side_by_side_with_unconditional_figures(tmp_path):
    for label, share in (("plain", 0.0), ("cond", 0.5)):
        _save(tmp_path / label / "flow" / "pretrained", "flow_matching", share, "euler")
        _save(tmp_path / label / "flow_map" / "pretrained", "lsd", share, "flow_map")
    out = tmp_path / "table.md"
    argv = ["--runs", f"plain={tmp_path / 'plain'}", "--runs", f"cond={tmp_path / 'cond'}", "--num", "4", "--batch", "4",
            "--prompt-len", "3", "--context", "3", "--hole", "2", "--unconditional", "4", "--out", str(out)]
    rows = _script().main(argv)
    names = [(name, hold) for name, hold, _ in rows]
    # each sampler row of both sets next to each other; infilling after prompt completion
    assert names[:4] == [("plain: flow Euler 32", "clean"), ("plain: flow Euler 32", "path"),
                         ("cond: flow Euler 32", "clean"), ("cond: flow Euler 32", "path")]
    assert ("cond: flow map 4", "clean") in names and names[-1] == ("cond: flow map 1", "clean")
    churn = [f for name, _, f in rows if name == "cond: flow map 4 churn"]
    assert len(churn) == 2 and all(f["nfe"] == 4 for f in churn)  # prompt completion and infilling, 4 jumps each
    for _, _, f in rows:
        assert 0.0 <= f["boundary_valid"] <= 1.0 and 0.0 <= f["free_valid"] <= 1.0 and f["free_nll"] > 0
    text = out.read_text()
    assert "- cond: flow_map: lsd, condition_share 0.5" in text and "- plain: flow: flow_matching, condition_share 0" in text
    assert "| cond: flow map 1 | clean | 1 |" in text and "unconditional valid" in text
    assert "Not measured (no checkpoint): plain: mdlm" in text


def test_single_checkpoints_and_refusals(tmp_path, capsys):
    _save(tmp_path / "flow", "flow_matching", 0.0, "euler")
    _save(tmp_path / "other", "flow_matching", 0.0, "euler", data={**DATA, "init_args": {**DATA["init_args"], "num_states": 12}})
    out = tmp_path / "one.md"
    common = ["--num", "2", "--batch", "2", "--prompt-len", "3", "--context", "3", "--hole", "2", "--out", str(out)]
    rows = _script().main(["--checkpoint", f"mine/flow={tmp_path / 'flow'}", *common])
    assert {name for name, _, _ in rows} == {"mine: flow Euler 32", "mine: flow Euler 128"}
    assert "unconditional valid" not in out.read_text()
    with pytest.raises(SystemExit):
        _script().main(["--checkpoint", f"flowmap={tmp_path / 'flow'}", *common])
    assert "METHOD one of flow, flow_map, mdlm, ar" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main(["--checkpoint", f"flow={tmp_path / 'flow'}", "--checkpoint", f"b/flow={tmp_path / 'other'}", *common])
    assert "one and the same markov data" in capsys.readouterr().err
