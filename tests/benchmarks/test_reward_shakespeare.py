"""benchmarks/reward_shakespeare.py on tiny character-level Shakespeare models trained for 2 steps (flow map, AR judge)
and an untrained two-class classifier of the same vocabulary: every row is written, with its samples."""

import lightning as L
import torch

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.data.shakespeare import ShakespeareData
from flowzoo.module import FlowLM
from helpers import benchmark_script

SMALL = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}


def fitted(data, steps: int = 2, causal: bool = False, **parts) -> FlowLM:
    torch.manual_seed(0)
    model = FlowLM(backbone={"name": "dit", "init_args": {**SMALL, "causal": causal}}, vocab_size=data.vocab_size,
                   num_val_samples=0, warmup_steps=1, **parts)
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
              enable_model_summary=False).fit(model, data)
    return model


def test_reward_shakespeare_writes_every_row_and_its_samples(tmp_path):
    data = ShakespeareData(seq_len=16, batch_size=4)
    models = tmp_path / "study"
    save_pretrained(fitted(data, path="linear", objective="lsd", sampler="flow_map"), models / "flow_map" / "pretrained")
    save_pretrained(fitted(data, causal=True, path="autoregressive", objective="ar", sampler="ar"), models / "judge" / "pretrained")
    classifier = FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=data.vocab_size,
                        objective={"name": "classify", "init_args": {"classes": ["comedy", "tragedy"]}})
    save_pretrained(classifier, tmp_path / "classifier")
    output = tmp_path / "reward.md"
    benchmark_script("reward_shakespeare").main([
        "--models", str(models), "--classifier", str(tmp_path / "classifier"), "--num-samples", "4", "--etas", "1",
        "--particles", "2", "--best-of", "2", "--show", "1", "--output", str(output),
        "--finetuned", f"tuned={models / 'flow_map' / 'pretrained'}"])
    table = output.read_text()
    for method, budget in [("data (validation)", "-"), ("flow map, 1 step (base)", "-"), ("flow map, 4 steps (base)", "-"),
                           ("steered flow map, 4 steps", "eta=1λ"), ("particles, flow map 4 steps", "K=2"),
                           ("best-of-N SIR, flow map 1 step", "N=2"), ("tuned", "1 step, 0 train evals")]:
        assert f"| {method} | {budget} |" in table, method
    assert table.count("    p=") == 8  # one sample shown for each of the 8 rows
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| steered")]
    p_target, reward_evals = float(rows[0][3]), float(rows[0][8])
    assert 0.0 <= p_target <= 1.0 and reward_evals == 5.0  # 4 lookaheads and the final score
