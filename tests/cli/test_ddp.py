"""DDP from the command line, on the CPU with gloo: 2 processes with ``ddp_spawn`` inside pytest (``ddp`` would re-run
pytest as rank 1), and one ``ddp`` run through a ``flowzoo fit`` subprocess (the entry point re-run by Lightning's
launcher with the same arguments)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from flowzoo.cli import main
from helpers import tiny_cli

TESTS = Path(__file__).resolve().parents[1]  # tests/, where run_helpers.py lives
TINY = tiny_cli(batch_size=8) + [
    "--model.warmup_steps=1",
    "--model.lr=0.01",
    "--trainer.max_steps=3",
    "--trainer.limit_val_batches=0",
    "--model.num_val_samples=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--trainer.precision=32-true",
    "--trainer.callbacks+=flowzoo.callbacks.EMA",
]


def records(path) -> dict[int, list[dict]]:
    """{rank: [records]} written by run_helpers.RecordSteps."""
    return {rank: [json.loads(line) for line in open(f"{path}.rank{rank}")] for rank in (0, 1)}


def check_ddp_run(root: Path, record: Path, num_train: int = 64) -> None:
    """Two ranks, a disjoint half of the rows each, identical weights after every step, one checkpoint that loads."""
    from flowzoo.checkpoints import load_checkpoint

    ranks = records(record)
    shares = {}
    for rank, lines in ranks.items():
        (start,) = [r for r in lines if "indices" in r]
        assert start["sampler"] == "ResumableSampler" and start["replicas"] == 2 and start["rank"] == rank
        shares[rank] = set(start["indices"])
    assert not shares[0] & shares[1], "the ranks read overlapping rows"
    assert shares[0] | shares[1] == set(range(num_train)) and len(shares[0]) == num_train // 2
    steps = {rank: [r for r in lines if "step" in r] for rank, lines in ranks.items()}
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] == [1, 2, 3]
    for a, b in zip(steps[0], steps[1]):
        assert a["rows"] != b["rows"]  # different data on each rank ...
        assert a["weights"] == b["weights"], "gradients were not synchronised"  # ... and the same weights after the step
    files = sorted(p.name for p in (root / "version_0" / "checkpoints").iterdir())
    assert files == ["epoch=0-step=3.ckpt", "last.ckpt"], files  # written once, in one run folder
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "latest", "pretrained", "version_0"]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    model = load_checkpoint(root / "checkpoints" / "last.ckpt")
    load_checkpoint(root / "pretrained")
    return model, ckpt


def test_ddp_spawn_trains_flow_matching_distill_and_mdlm_on_two_processes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # run_helpers, also in the spawned processes (they get sys.path)
    spawn = ["--trainer.strategy=ddp_spawn", "--trainer.callbacks+=run_helpers.RecordSteps"]

    flow, flow_record = tmp_path / "flow", tmp_path / "flow.jsonl"
    assert main(["fit", *TINY, *spawn, f"--trainer.callbacks.path={flow_record}", f"--trainer.default_root_dir={flow}"]) == 0
    check_ddp_run(flow, flow_record)

    distill, distill_record = tmp_path / "distill", tmp_path / "distill.jsonl"
    assert main(["fit", *TINY, *spawn, f"--trainer.callbacks.path={distill_record}", f"--trainer.default_root_dir={distill}",
                 "--model.objective=distill", f"--model.objective.teacher={flow / 'pretrained'}", "--model.sampler=flow_map",
                 "--model.sampler.steps=1"]) == 0
    _, ckpt = check_ddp_run(distill, distill_record)
    assert not [k for k in ckpt["state_dict"] if "_teacher" in k or k.startswith("objective.teacher.")], "the teacher is never saved"
    for rank, lines in records(distill_record).items():
        ids = {r["teacher"] for r in lines if "step" in r}
        assert len(ids) == 1 and None not in ids, f"rank {rank} loaded its teacher {len(ids)} times"

    mdlm, mdlm_record = tmp_path / "mdlm", tmp_path / "mdlm.jsonl"
    assert main(["fit", *TINY, *spawn, f"--trainer.callbacks.path={mdlm_record}", f"--trainer.default_root_dir={mdlm}",
                 "--model.path=masked", "--model.objective=mdlm", "--model.sampler=ancestral", "--model.sampler.steps=2"]) == 0
    check_ddp_run(mdlm, mdlm_record)


def test_ddp_from_the_flowzoo_command_starts_the_second_process_with_the_same_arguments(tmp_path):
    """Lightning's ``ddp`` launcher re-runs the command line for rank 1: it must get the arguments (the entry point
    used to reset sys.argv) and rank 0's run folder."""
    root, record = tmp_path / "run", tmp_path / "run.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("FLOWZOO_RUN_DIR", None)
    cmd = [sys.executable, "-m", "flowzoo", "fit", *TINY, "--trainer.strategy=ddp", "--trainer.callbacks+=run_helpers.RecordSteps",
           f"--trainer.callbacks.path={record}", f"--trainer.default_root_dir={root}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    check_ddp_run(root, record)
