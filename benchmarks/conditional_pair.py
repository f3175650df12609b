"""Train a small flow on `markov` with and without ``condition_share`` and compare conditional and unconditional figures.

    python benchmarks/conditional_pair.py --share 0.5 --steps 600 --out runs/conditional_pair

Writes ``OUT/share{S}/pretrained`` (save_pretrained) and prints, for each model: unconditional valid transitions
and NLL (MarkovChain.evaluate on 128 samples of 32 tokens) and the conditional figures of 8-token held-out prompts
(24 generated) with the Euler sampler, clean hold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.data.markov import MarkovData
from flowzoo.module import FlowLM
from flowzoo.prompt import Prompt


def train(share: float, steps: int, out: Path, width: int, depth: int, seed: int) -> FlowLM:
    torch.manual_seed(seed)
    data = MarkovData(seq_len=32, batch_size=64)
    model = FlowLM(
        backbone={"name": "dit", "init_args": {"width": width, "depth": depth, "heads": 4, "cond_dim": width}},
        objective={"name": "flow_matching", "init_args": {"condition_share": share}},
        sampler={"name": "euler", "init_args": {"steps": 32}},
        vocab_size=data.vocab_size, lr=1e-3, warmup_steps=50, num_val_samples=0,
    )
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_model_summary=False, enable_progress_bar=True)
    trainer.fit(model, data)
    save_pretrained(model, out / f"share{share}" / "pretrained")
    return model


def measure(model: FlowLM, data: MarkovData, num: int, prompt_len: int) -> dict[str, float]:
    model.eval()
    rows = torch.stack([data.splits["validation"][i]["input_ids"] for i in range(num)]).long()
    free = model.generate(num, rows.shape[1], seed=0).tokens
    figures = {f"uncond_{k}": v for k, v in data.evaluate_samples(free).items() if k in ("valid_transitions", "nll")}
    prompt = Prompt.prefix(rows[:, :prompt_len], rows.shape[1])
    done = model.generate(num, rows.shape[1], seed=0, prompt=prompt).tokens
    figures.update(data.evaluate_completions(done, prompt.mask.expand_as(done)))
    return {k: round(float(v), 4) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/conditional_pair")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = train(args.share, args.steps, Path(args.out), args.width, args.depth, args.seed)
    print(json.dumps({"share": args.share, "steps": args.steps, **measure(model, MarkovData(seq_len=32, batch_size=64), args.num, 8)}))


if __name__ == "__main__":
    main()
