"""Merge the ``results.json`` of several ``flowzoo benchmark`` runs into one table.

A long benchmark can be run in parts (for example the undistilled models while the distilled ones still train, or
on two machines) and put together afterwards: the rows keep their measured figures, the models are listed once,
the ``data (validation)`` reference row goes last, and the headline is recomputed over all rows with the
``headline`` of ``--config`` (the full benchmark config). A model may be split over parts (a later part measuring
the rows an earlier one stopped before) if every part names the same checkpoint for it; a row measured twice is
refused. Every part must use the same samples, length, seed and device, or the merge is refused: the rows would not
be comparable.

    python benchmarks/merge_results.py --config benchmarks/study_markov.yaml \
        --part runs/bench/markov_a --part runs/bench/markov_b --output docs/benchmark/markov
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowzoo.benchmark import headline, load_config, write
from flowzoo.errors import FlowzooError

SAME = ("num_samples", "batch_size", "seed", "device", "warmup")


def merge(parts: list[dict], config: dict, allow_partial: bool = False) -> dict:
    """One results dict from ``parts`` (results dicts, each complete unless ``allow_partial``: a part stopped early
    keeps the rows it finished, and the merged table lists what it did not run); ``config`` gives the name and
    headline."""
    if not parts:
        raise ValueError("nothing to merge: give at least one --part")
    for key in SAME:
        values = {json.dumps(p["config"].get(key)) for p in parts}
        if len(values) > 1:
            raise ValueError(f"the parts differ in {key!r} ({', '.join(sorted(values))}): their rows are not comparable")
    if len({p["length"] for p in parts}) > 1:
        raise ValueError(f"the parts differ in sequence length ({sorted({p['length'] for p in parts})})")
    unfinished = [p["name"] for p in parts if not p.get("complete")]
    if unfinished and not allow_partial:
        raise ValueError(f"a part did not finish ({unfinished}): merge complete runs only, or pass --allow-partial")
    models, rows, data_rows, measured = {}, [], [], set()
    for part in parts:
        for name, model in part["models"].items():
            if name in models and models[name].get("checkpoint") != model.get("checkpoint"):
                raise ValueError(f"model {name!r} is in more than one part with different checkpoints "
                                 f"({models[name].get('checkpoint')} and {model.get('checkpoint')})")
            models.setdefault(name, model)  # one model may be split over parts (a later part finishing its rows)
        for row in part["rows"]:
            if row["sampler_name"] == "data":
                data_rows.append(row)
                continue
            key = (row["model"], row["sampler_name"], row["steps"])
            if key in measured:
                raise ValueError(f"the row {key[0]} {key[1]} {key[2]} is in more than one part")
            measured.add(key)
            rows.append(row)
    order = {m.get("name"): i for i, m in enumerate(config.get("models", []))}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))  # stable: each model's rows keep their order
    merged_config = {**parts[0]["config"], "name": config.get("name", parts[0]["name"]), "headline": config.get("headline")}
    entries: dict = {}  # each model once, as the first part that names it gives it
    for part in parts:
        for entry in part["config"]["models"]:
            entries.setdefault(entry.get("name"), entry)
    merged_config["models"] = list(entries.values())
    results = {
        "name": merged_config["name"], "config": merged_config, "environment": parts[0]["environment"],
        "judge": parts[0]["judge"], "length": parts[0]["length"], "models": models, "rows": rows + data_rows[:1],
        "conditional_rows": [r for p in parts for r in p.get("conditional_rows") or []], "complete": True,
        "parts": [{"name": p["name"], "environment": p["environment"], "complete": bool(p.get("complete"))} for p in parts],
        "not_run": [left for p in parts if not p.get("complete") and (left := _missing(p, measured))],
    }
    results["headline"] = headline(results, merged_config)
    return results


def _missing(part: dict, measured: set[tuple]) -> str:
    """The rows a part stopped before: its models' sampler settings with no row in any part (``measured``: the
    (model, sampler, steps) of every merged row); "" when another part measured them all."""
    from flowzoo.benchmark import sampler_grid

    left = []
    for entry in part["config"]["models"]:
        for spec in sampler_grid(entry.get("samplers")):
            if spec is None:
                continue
            key = (entry.get("name"), spec["name"], (spec.get("init_args") or {}).get("steps"))
            if key not in measured:
                left.append(f"{key[0]} {key[1]} {key[2]}")
    return f"{part['name']}: stopped before " + ", ".join(left) if left else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the full benchmark YAML (its name, models' order and headline)")
    parser.add_argument("--part", action="append", required=True, help="a benchmark output folder holding results.json (repeatable)")
    parser.add_argument("--output", required=True, help="where results.{json,md,png} of the merge go")
    parser.add_argument("--allow-partial", action="store_true", help="merge a part that stopped early: its finished rows, the rest listed as not run")
    args = parser.parse_args(argv)
    try:
        parts = [json.loads((Path(p) / "results.json").read_text()) for p in args.part]
        config = load_config(args.config)
        merged = merge(parts, config, args.allow_partial)
        paths = write(merged, args.output)
        if merged["not_run"]:
            with open(paths["markdown"], "a") as f:
                f.write("\n## Not run\n\n" + "\n".join(f"- {line}" for line in merged["not_run"]) + "\n")
    except (OSError, ValueError, FlowzooError) as err:
        print(f"merge_results: {err}", file=sys.stderr)
        return 2
    print(" ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
