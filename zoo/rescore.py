"""``flowzoo benchmark --rescore DIR --judge J --output OUT``: a finished benchmark's GenPPL under another judge.

GenPPL = exp(sum_i -log p_J(y_i | y_<i) / N) over the judge-tokenised texts that each row of ``DIR`` kept
(``save_samples: true``, :mod:`flowzoo.kept_samples`); every other figure of a row (entropy, the data's metrics,
NFE, time, memory) belongs to the samples or the sampler and is kept as measured. No checkpoint is loaded: the
samples are the ones drawn then, so a judge that was retrained, replaced or fixed scores the same samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from flowzoo.benchmark import headline
from flowzoo.judges import check_eos, load_judge, weights_digest
from flowzoo.kept_samples import SAMPLES_FILE, KeptSamplesError, read_samples
from flowzoo.metrics import GenerativePerplexity


def rescore(source: str | Path, judge: str, judge_eos: str | None = None, judge_text: str | None = None,
            judge_batch_size: int = 16, device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """The results of the benchmark in ``source`` with every row's ``gen_ppl`` recomputed under ``judge`` (and
    ``judge_eos``, default: the table's); ``results["rescored"]`` says where from and under which judge it was."""
    source = Path(source)
    path = source / "results.json"
    if not path.is_file():
        raise KeptSamplesError(f"{path} does not exist: --rescore takes the output folder of a `flowzoo benchmark` run")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise KeptSamplesError(f"{path} is not valid JSON ({err})") from None
    kept = read_samples(source, results["rows"])
    if judge_text is not None and judge_text != kept["judge_text"]:
        raise KeptSamplesError(f"the samples in {source} were kept as the judge read them under judge_text "
                               f"{kept['judge_text']!r}; they cannot be re-read as {judge_text!r} (run the benchmark again)")
    if threads:
        torch.set_num_threads(int(threads))
    config = results["config"]
    eos = check_eos(judge_eos or config.get("judge_eos", "all"))
    scorer = load_judge(judge, device=device, batch_size=judge_batch_size)
    for row, entry in zip(results["rows"], kept["rows"]):
        if entry["texts"] is None:  # a row without text had no GenPPL then either
            continue
        metric = GenerativePerplexity(scorer, eos=eos)
        metric.update(entry["texts"])
        row["metrics"]["gen_ppl"] = float(metric.compute())
    results["rescored"] = {"from": str(source), "judge": results.get("judge"), "judge_digest": results.get("judge_digest"),
                           "judge_eos": config.get("judge_eos", "all"), "conditional_rows_dropped": len(results.get("conditional_rows") or [])}
    results["judge"], results["judge_digest"] = getattr(scorer, "name", str(judge)), weights_digest(judge)
    config.update(judge=str(judge), judge_eos=eos, judge_batch_size=judge_batch_size)
    results["conditional_rows"] = []  # their completions are not kept: they are not re-scored
    results["headline"] = headline(results, config)
    return results


def copy_samples(source: str | Path, output: str | Path) -> None:
    """The kept samples go with the re-scored table, so it can be re-scored again."""
    if Path(source).resolve() != Path(output).resolve():
        shutil.copyfile(Path(source) / SAMPLES_FILE, Path(output) / SAMPLES_FILE)
