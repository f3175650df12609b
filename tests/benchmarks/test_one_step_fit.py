"""benchmarks/one_step_fit.py: a 1-step map fitted to a frozen k-step sampler's samples, noise for noise."""

import json

import pytest
import torch

from flowzoo.checkpoints import load_checkpoint
from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.module import FlowLM
from flowzoo.objectives.paired_regression import PairedRegression, one_step_logits
from helpers import benchmark_script

MIRROR = {"name": "mirror", "init_args": {"num_states": 12, "num_train": 16, "num_val": 8, "seq_len": 8}}
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}


def _map(folder, data=MIRROR, seed=0, **parts):
    torch.manual_seed(seed)
    parts = {"objective": "lsd", "sampler": "flow_map", **parts}
    model = FlowLM(backbone=TINY, vocab_size=12, num_val_samples=0, **parts)
    with torch.no_grad():  # off the zero-initialised output (whose draws are all one token): draws that vary with the noise
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.data_spec = data
    save_pretrained(model, folder)
    return str(folder)


def test_fit_trains_the_student_only_and_writes_its_readings(tmp_path, capsys):
    script = benchmark_script("one_step_fit")
    target = _map(tmp_path / "map")
    before = {k: v.clone() for k, v in load_checkpoint(target).state_dict().items()}
    out = tmp_path / "fit.md"
    student = _map(tmp_path / "student", seed=1)  # another network: its draws differ from the target's
    argv = ["--target", target, "--student", student, "--steps", "40", "--eval-every", "20", "--num", "16", "--batch", "16", "--lr", "3e-3",
            "--out", str(out), "--save", str(tmp_path / "fitted"), "--keep-readings"]
    results = script.main(argv)
    readings = results["readings"]
    assert [r["step"] for r in readings] == [0, 20, 40]
    assert all(0.0 <= r["agreement"] <= 1.0 and 0.0 <= r["pair_match"] <= 1.0 for r in readings)
    assert readings[0]["agreement"] < 0.1 < 0.4 < readings[-1]["agreement"]  # the regression brings the 1-step draw to the target's
    assert readings[-1]["loss"] < readings[1]["loss"]
    after = load_checkpoint(target).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the target on disk untouched
    text = out.read_text()
    assert "| step | CE to the target (train, nats/token) | agreement with the target |" in text and "| 40 |" in text
    assert json.loads(out.with_suffix(".json").read_text())["argv"] == argv
    fitted = load_checkpoint(tmp_path / "fitted").eval()  # the student as trained: its 1-step draws read as the last reading
    assert fitted.objective.registry_name == "paired_regression" and fitted.objective.teacher_path == target  # how it was trained
    assert fitted.objective.init_from == student and fitted.objective.teacher_steps == 4
    eps = script.noise(fitted, 16, 8, torch.Generator().manual_seed(10_000))
    objective = PairedRegression(teacher_steps=4)
    objective.set_teacher(load_checkpoint(target))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = one_step_logits(fitted, eps).argmax(-1)
        aim = objective.targets(eps)
    assert float((tokens == aim).float().mean()) == pytest.approx(readings[-1]["agreement"])
    kept = {step: load_checkpoint(tmp_path / f"fitted_step{step}").state_dict() for step in (20, 40)}  # --keep-readings
    assert all(torch.equal(kept[40][k], v) for k, v in fitted.state_dict().items())
    assert not all(torch.equal(kept[20][k], v) for k, v in fitted.state_dict().items())  # the step-20 student, not a copy of the last
    assert not (tmp_path / "fitted_step0").exists() and "each reading's in" in text

    markov = _map(tmp_path / "markov", data={"name": "markov", "init_args": {"num_states": 12, "num_train": 16, "num_val": 8, "seq_len": 8}})
    with pytest.raises(SystemExit):
        script.main(["--target", markov, "--out", str(out)])
    assert "trained on mirror data" in capsys.readouterr().err
    gaussian = _map(tmp_path / "gaussian", head="gaussian")
    with pytest.raises(SystemExit):
        script.main(["--target", target, "--student", gaussian, "--out", str(out)])
    assert "needs the categorical head, not GaussianHead" in capsys.readouterr().err
    flow = _map(tmp_path / "flow", objective="flow_matching", sampler="euler")
    with pytest.raises(SystemExit):
        script.main(["--target", flow, "--out", str(out)])
    assert "teacher must be a flow map" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--target", target, "--k", "0", "--out", str(out)])
    assert "must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--target", target, "--keep-readings", "--out", str(out)])
    assert "--keep-readings keeps students beside --save's folder" in capsys.readouterr().err
