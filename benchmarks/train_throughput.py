"""Training throughput (tokens/s) of recipe configs: the OpenWebText flow beside MDLM, at full size, on one device.

For each config it builds the model exactly as ``flowzoo fit`` would (the ``model`` section, vocabulary from the
config's tokenizer name), then times ``steps`` optimizer steps after ``warmup`` untimed ones: forward, backward
and AdamW step of one micro-batch of ``batch_size x seq_len`` random token ids (throughput does not depend on the
text), under the config's precision (bf16 autocast for ``bf16-mixed``). Tokens/s = batch_size x seq_len / median
step time; the peak memory is ``torch.cuda.max_memory_allocated`` on CUDA. Writes a markdown table.

    python benchmarks/train_throughput.py --device cuda                       # configs/owt_flow.yaml, configs/owt_mdlm.yaml
    python benchmarks/train_throughput.py --device cuda --configs configs/owt_flow.yaml configs/owt_mdlm.yaml configs/owt_ar.yaml
    python benchmarks/train_throughput.py --device cpu --tiny --steps 2 --warmup 1 --output /tmp/tp.md   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from flowzoo import FlowLM

VOCAB = {"gpt2": 50257, "bert-base-uncased": 30522}
KINDS = ("backbone", "path", "head", "objective", "sampler")
TINY = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}


def spec(node) -> dict:
    return {"class_path": node, "init_args": {}} if isinstance(node, str) else {"class_path": node["class_path"], "init_args": dict(node.get("init_args") or {})}


def build(config: dict, tiny: bool) -> tuple[FlowLM, dict]:
    model_cfg, data = config["model"], config["data"]["init_args"]
    parts = {k: spec(model_cfg[k]) for k in KINDS}
    if "teacher" in parts["objective"]["init_args"]:
        raise SystemExit("a distillation config needs its teacher: measure the flow it is distilled from instead")
    if tiny:
        parts["backbone"]["init_args"].update(TINY)
    model = FlowLM(vocab_size=VOCAB.get(data["tokenizer"], 50257), **parts)
    return model, data


def measure(path: Path, device: torch.device, steps: int, warmup: int, batch_size: int | None, seq_len: int | None, tiny: bool) -> dict:
    config = yaml.safe_load(path.read_text())
    model, data = build(config, tiny)
    model.to(device).train()
    B, L = batch_size or data["batch_size"], seq_len or data["seq_len"]
    bf16 = str(config["trainer"].get("precision", "32")).startswith("bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=model.lr, betas=model.betas, weight_decay=model.weight_decay)
    batch = torch.randint(0, model.vocab_size, (B, L), device=device, generator=torch.Generator(device=device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.objective(model, batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "config": path.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": f"{B} x {L}",
        "precision": "bf16-mixed" if bf16 else "32",
        "seconds_per_step": median,
        "tokens_per_second": B * L / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": float(loss),
    }


def table(rows: list[dict], device: torch.device, args) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        f"Training throughput on {name} (torch {torch.__version__}); median of {args.steps} steps after {args.warmup} warm-up, "
        "one micro-batch per step (forward, backward, clip, AdamW){}.".format(", tiny backbone" if args.tiny else ""),
        "",
        "| config | parameters | micro-batch | precision | s / step | tokens / s | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(f"| {r['config']} | {r['parameters']:,} | {r['batch']} | {r['precision']} | {r['seconds_per_step']:.3f} | {r['tokens_per_second']:,.0f} | {peak} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/owt_flow.yaml", "configs/owt_mdlm.yaml"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, help="micro-batch (default: the config's data.batch_size)")
    parser.add_argument("--seq-len", type=int, help="default: the config's data.seq_len")
    parser.add_argument("--tiny", action="store_true", help="a 1-block, width-32 backbone (smoke test)")
    parser.add_argument("--output", default="benchmarks/results/train_throughput.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(Path(c), device, args.steps, args.warmup, args.batch_size, args.seq_len, args.tiny) for c in args.configs]
    text = table(rows, device, args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
