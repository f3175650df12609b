"""Peak memory and time of sampling: flow-map and Euler samplers on the dense (B, L, V) state or on input
embeddings (the samplers' switch ``fused``), beside MDLM's ancestral sampler, on the same DiT trunk.

With ``fused`` on, the state is carried as x W_in^T (B, L, D): each step is e <- a e + b softmax_embedding(h)
(flowzoo.state.EmbeddedState), so no (B, L, V) tensor exists but the last step's logits. Memory is measured
as in benchmarks/kernel_memory.py (CPU: peak live bytes of tensor storages created during the call and the
process's peak RSS; CUDA: torch.cuda.max_memory_allocated minus the memory held before it); parameters excluded.

    python benchmarks/sampling_memory.py                     # CPU, writes benchmarks/results/sampling_memory.md
    python benchmarks/sampling_memory.py --device cuda --batch 32 --length 1024
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_memory import add_size_arguments, peak_and_time, prepare_device  # noqa: E402

from flowzoo.module import FlowLM  # noqa: E402

# row name -> (path, sampler name, fused)
RUNS = {
    "mdlm ancestral": ("masked", "ancestral", None),
    "flow_map dense": ("linear", "flow_map", False),
    "flow_map fused": ("linear", "flow_map", True),
    "euler dense": ("linear", "euler", False),
    "euler fused": ("linear", "euler", True),
}


def build(path: str, args, device) -> FlowLM:
    backbone = {"name": "dit", "init_args": {"width": args.width, "depth": args.depth, "heads": args.heads, "cond_dim": 128}}
    objective = "mdlm" if path == "masked" else "psd"
    model = FlowLM(backbone=backbone, path=path, objective=objective, sampler="ancestral" if path == "masked" else "flow_map",
                   vocab_size=args.vocab).to(device).eval()
    torch.nn.init.normal_(model.backbone.unembed.weight, std=0.02)  # not the zero init: a real softmax
    return model


def measure(name: str, args, device) -> dict:
    path, sampler, fused = RUNS[name]
    torch.manual_seed(0)
    model = build(path, args, device)
    init = {"steps": args.steps} if fused is None else {"steps": args.steps, "fused": fused}
    spec = {"name": sampler, "init_args": init}
    measured = peak_and_time(lambda: model.generate(args.batch, args.length, sampler=spec, seed=0), device, args.repeat)
    return {"name": name, **measured}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_arguments(p, batch=8, length=128, repeat=1)
    p.add_argument("--steps", type=int, default=4, help="sampler steps (network evaluations)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampling_memory.md"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    device = prepare_device(args, argv)
    rows = []
    for name in names:
        rows.append(measure(name, args, device))
        r = rows[-1]
        print(f"{name:16s} peak {r['peak'] / 2**20:9.1f} MiB  rss {r['rss'] / 2**20:9.1f} MiB  {r['time'] * 1e3:9.1f} ms", flush=True)
    write_table(rows, args, device)


def write_table(rows, args, device) -> None:
    ref = next((r["peak"] for r in rows if r["name"] == "mdlm ancestral"), float("nan"))
    state = args.batch * args.length * args.vocab * 4
    lines = [
        "# Sampling memory benchmark",
        "",
        f"Device: {device.type}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {args.threads} thread(s)")
        + f"; V = {args.vocab}, {args.batch} samples x length {args.length}, {args.steps} steps, DiT width {args.width}, "
        f"depth {args.depth}; float32. One (B, L, V) float32 tensor = {state / 2**20:.1f} MiB.",
        "",
        "Peak: " + ("torch.cuda.max_memory_allocated during the call minus memory before it." if device.type == "cuda" else
                    "peak live bytes of tensor storages created during `model.generate` (TorchDispatchMode + storage "
                    "weakrefs); peak RSS: the process's peak resident memory above its resident memory before the call.")
        + f" Time: median of {args.repeat} call(s) after the tracked one. fused = the sampler's switch.",
        "",
        "| sampler | peak MiB | peak RSS MiB | time ms | peak / MDLM |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['peak'] / 2**20:.1f} | {r['rss'] / 2**20:.1f} | {r['time'] * 1e3:.0f} | {r['peak'] / ref:.2f} |")
    out = Path(args.out)
    shown = {**vars(args), "out": os.path.relpath(out.resolve(), Path(__file__).resolve().parent.parent)}
    lines += ["", "Command: `python benchmarks/sampling_memory.py " + " ".join(f"--{k} '{v}'" if " " in str(v) else f"--{k} {v}"
                                                                     for k, v in shown.items()) + "`", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
