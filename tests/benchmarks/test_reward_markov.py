"""benchmarks/reward_markov.py on tiny Markov checkpoints trained for 3 steps (flow map, AR, MDLM), in its quick mode
with a two-step policy-gradient run: every method gets its rows, REINFORCE's budgets are its training evaluations."""

import pytest

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.module import FlowLM
from flowzoo.objectives.reward import training_reward_evaluations
from helpers import benchmark_script, markov_trained

SMALL = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}
DATA = {"num_states": 24, "num_train": 48, "num_val": 16, "seq_len": 8, "batch_size": 16}
METHODS = {
    "flow_map": {"path": "linear", "objective": "lsd", "sampler": "flow_map"},
    "ar": {"path": "autoregressive", "objective": "ar", "sampler": "ar", "causal": True},
    "mdlm": {"path": "masked", "objective": "mdlm", "sampler": {"name": "ancestral", "init_args": {"steps": 4}}},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for name, parts in METHODS.items():
        save_pretrained(markov_trained(parts, DATA, SMALL), root / name / "pretrained")
    return root


def test_reward_markov_quick_run_with_the_policy_gradient_baseline(models, tmp_path):
    script = benchmark_script("reward_markov")
    output = tmp_path / "reward.md"
    pg = ["--policy-gradient", "--pg-steps", "2", "--pg-samples", "4", "--pg-every", "1", "--mdlm-steps", "3"]
    script.main(["--models", str(models), "--num-samples", "16", "--quick", "--output", str(output), *pg])
    table = output.read_text()
    for method in ("exact rho_r (reference)", "best-of-N SIR, MDLM 3 steps", "best-of-N SIR, AR", "steered flow map, 4 steps",
                   "particles, flow map 4 steps"):
        assert f"| {method} |" in table
    for name in ("AR", "MDLM"):
        assert f"| policy gradient, {name}, lr 0.0001 | 4 train evals |" in table
        assert f"| policy gradient, {name}, lr 0.0001 | 8 train evals |" in table
    assert output.with_suffix(".png").stat().st_size > 0
    # --append keeps every row and adds the new run's
    before = table.count("\n| ")
    script.main(["--models", str(models), "--num-samples", "16", "--output", str(output), "--append", *pg[:-2], "--pg-steps", "1"])
    again = output.read_text()
    assert again.count("\n| ") == before + 2 and again.count("| policy gradient, AR, lr 0.0001 | 4 train evals |") == 2
    commands = [line for line in again.splitlines() if line.startswith("`python benchmarks/reward_markov.py")]
    assert len(commands) == 2 and "--quick" in commands[0] and "--append" in commands[1]  # both runs' commands kept


def test_training_evaluations_are_compared_at_the_fine_tuned_reward():
    script = benchmark_script("reward_markov")
    model = FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=8, sampler="flow_map",
                   objective={"name": "reward", "init_args": {"num_generated": 16, "intermediate": 0.5}})
    model.hub_metadata, model.data_spec = {"training": {"global_step": 10}}, {"name": "markov", "init_args": {"batch_size": 8}}
    assert training_reward_evaluations(model) == 10 * (16 + 8)  # samples a step, plus the batch of the intermediate term
    model.objective.intermediate = 0.0
    assert training_reward_evaluations(model) == 10 * 16
    rows = [("reward FT", "1 step, 100 train evals", {"reward": 3.0}), ("reward FT", "4 steps, 100 train evals", {"reward": 9.0}),
            ("policy gradient, AR, lr 0.0001", "200 train evals", {"reward": 2.0}),
            ("policy gradient, AR, lr 0.0001", "600 train evals", {"reward": 3.1}),
            ("policy gradient, MDLM, lr 0.0001", "400 train evals", {"reward": 2.5})]
    lines = "\n".join(script.evaluation_summary(rows))
    assert "reward FT reaches 3.000 with 100 evaluations; policy gradient, AR, lr 0.0001 first reaches it after 600 (6.0x as many)" in lines
    assert "policy gradient, MDLM, lr 0.0001 ends at 2.500 after 400 (> 4.0x as many, and not there yet)" in lines
    assert "9.000" not in lines  # the 4-step rows are not the one-step map's reward
    assert "does not hold here (REINFORCE needed 4.0x to 6.0x" in lines  # MDLM's 4.0x is a lower bound: not there yet
    slow = [rows[0], ("policy gradient, AR, lr 0.0001", "800 train evals", {"reward": 3.1}),
            ("policy gradient, MDLM, lr 0.0001", "600 train evals", {"reward": 3.5})]
    assert "claim that the flow map's reward gradient needs at least 5x fewer reward evaluations than REINFORCE holds here " \
           "(REINFORCE needed 6.0x to 8.0x the fine-tune's evaluations)." in "\n".join(script.evaluation_summary(slow))


def test_step_checkpoints_are_the_newest_versions_in_step_order(tmp_path):
    script = benchmark_script("reward_markov")
    for version, names in (("version_0", ["step=900.ckpt"]), ("version_1", ["epoch=0-step=50.ckpt", "epoch=1-step=400.ckpt", "last.ckpt"])):
        (tmp_path / version / "checkpoints").mkdir(parents=True)
        for name in names:
            (tmp_path / version / "checkpoints" / name).touch()
    assert [(k, p.name) for k, p in script.step_checkpoints(tmp_path)] == [(50, "epoch=0-step=50.ckpt"), (400, "epoch=1-step=400.ckpt")]
    with pytest.raises(SystemExit, match="no step checkpoints"):
        script.step_checkpoints(tmp_path / "version_0" / "checkpoints")


def test_trajectory_rows_score_every_step_checkpoint_without_the_baselines(models, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from flowzoo.checkpoints import load_checkpoint
    from flowzoo.data.markov import MarkovData

    script = benchmark_script("reward_markov")
    model = load_checkpoint(models / "flow_map" / "pretrained").train()  # loaded for inference, in eval mode
    saver = ModelCheckpoint(dirpath=tmp_path / "run" / "version_0" / "checkpoints", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(max_steps=2, logger=False, callbacks=[saver], enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False)
    trainer.fit(model, MarkovData(**DATA))
    output = tmp_path / "trajectory.md"
    script.main(["--models", str(models), "--num-samples", "8", "--skip-baselines", "--output", str(output),
                 "--trajectory", f"tuned={tmp_path / 'run'}"])
    table = output.read_text()
    assert "| tuned | step 1, 1 step, 0 train evals |" in table and "| tuned | step 2, 1 step, 0 train evals |" in table
    assert "exact rho_r" not in table and "best-of-N" not in table  # no baseline rows
    assert "its NLL under ρ_1" in table
