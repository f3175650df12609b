"""Where a few-step flow map goes wrong on ``markov``: the confidence of its last prediction at tokens that
sit in an invalid transition, against the others.

The flow_map sampler decodes argmax delta per position. If the map cannot tell which of several branches
of the chain its noise leads to, the cross-entropy-optimal delta is their mixture, and per-position argmax
then mixes branches; such tokens show a low max_v delta_v. Prints the valid-transition rate and the mean /
median of max_v delta_v at tokens in an invalid transition and at the rest.

    python benchmarks/one_step_confidence.py --checkpoint runs/study/markov/flow_map/pretrained --steps 1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from flowzoo.checkpoints import load_checkpoint
from flowzoo.data.markov import MarkovData


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a flow map trained on markov (.ckpt or save_pretrained folder)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).eval()
    data_args = (model.data_spec or {}).get("init_args") or {}
    chain, length = MarkovData(**data_args).chain, data_args.get("seq_len", 32)
    sampler = {"name": "flow_map", "init_args": {"steps": args.steps, "fused": False}}  # unfused: delta is formed
    outs = [model.generate(args.batch_size, length, sampler=sampler, seed=b) for b in range(-(-args.num_samples // args.batch_size))]
    tokens = torch.cat([o.tokens for o in outs])[: args.num_samples].numpy()
    top = torch.cat([o.prediction for o in outs])[: args.num_samples].max(-1).values.numpy()  # (N, L): max_v delta_v
    valid = chain.transition[tokens[:, :-1], tokens[:, 1:]] > 0  # (N, L-1)
    in_invalid = np.zeros_like(top, dtype=bool)
    in_invalid[:, :-1] |= ~valid
    in_invalid[:, 1:] |= ~valid
    out = {
        "valid_transitions": float(valid.mean()),
        "confidence_in_invalid": (float(top[in_invalid].mean()), float(np.median(top[in_invalid]))),
        "confidence_elsewhere": (float(top[~in_invalid].mean()), float(np.median(top[~in_invalid]))),
    }
    print(f"{args.checkpoint}, {args.steps} step(s), {args.num_samples} samples: valid transitions {100 * out['valid_transitions']:.2f}%")
    print("max_v delta_v at tokens in an invalid transition: mean %.3f, median %.3f" % out["confidence_in_invalid"])
    print("max_v delta_v at the other tokens:                 mean %.3f, median %.3f" % out["confidence_elsewhere"])
    return out


if __name__ == "__main__":
    main()
