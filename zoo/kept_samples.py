"""The samples a benchmark keeps so that another GenPPL judge can score them later (``save_samples: true``).

``<output>/samples.json.gz`` holds, for every row of ``results.json`` in its order, the texts the judge read
(the data module's decode under the table's ``judge_text``), so a judge retrained, replaced or fixed re-scores the
same samples (``flowzoo benchmark --rescore <output>``) without the checkpoints that drew them. Written with a fixed
gzip timestamp: the same samples give the same bytes.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from flowzoo.errors import FlowzooError

SAMPLES_FILE = "samples.json.gz"


class KeptSamplesError(FlowzooError, ValueError):
    """Kept samples that are missing or do not belong to their results."""


def write_samples(rows: list[dict[str, Any]], texts: list[list[str] | None], output: str | Path, judge_text: str) -> Path:
    """``<output>/samples.json.gz``: one entry per row (model, sampler label, steps, its judge texts or None where
    the row has no text), replaced whole."""
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} rows but {len(texts)} sets of texts")
    entries = [{"model": r["model"], "sampler_label": r.get("sampler_label"), "steps": r.get("steps"), "texts": t}
               for r, t in zip(rows, texts)]
    path = Path(output) / SAMPLES_FILE
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        handle.write(json.dumps({"judge_text": judge_text, "rows": entries}).encode())
    os.replace(partial, path)
    return path


def read_samples(source: str | Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The kept samples of the benchmark in ``source``, checked against its ``rows`` (same models, samplers, steps,
    in the same order); refused with the reason otherwise."""
    path = Path(source) / SAMPLES_FILE
    if not path.is_file():
        raise KeptSamplesError(f"{path} does not exist: only a benchmark run with `save_samples: true` (or --save-samples) "
                               "keeps the samples another judge can score")
    try:
        with gzip.open(path, "rt") as handle:
            kept = json.load(handle)
    except (OSError, EOFError, json.JSONDecodeError) as err:
        raise KeptSamplesError(f"{path} cannot be read ({err}): corrupt or truncated") from None
    entries = kept.get("rows") if isinstance(kept, dict) else None
    if not isinstance(entries, list) or "judge_text" not in kept:
        raise KeptSamplesError(f"{path} is not a flowzoo samples file (no 'rows' and 'judge_text')")
    described = [(r["model"], r.get("sampler_label"), r.get("steps")) for r in rows]
    found = [(e.get("model"), e.get("sampler_label"), e.get("steps")) for e in entries]
    if described != found:
        i = next(i for i in range(max(len(found), len(described))) if found[i:i + 1] != described[i:i + 1])
        raise KeptSamplesError(f"{path} does not match the rows of its results.json ({len(found)} kept, {len(described)} rows; "
                               f"row {i}: kept {found[i] if i < len(found) else None}, results {described[i] if i < len(described) else None})")
    return kept
