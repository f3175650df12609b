"""``flowzoo benchmark``'s command line: a benchmark config run into a table (:mod:`flowzoo.benchmark`), or a
finished table's kept samples re-scored under another judge (``--rescore``, :mod:`flowzoo.rescore`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowzoo.benchmark import JUDGE_TEXTS, load_config, run, write
from flowzoo.judges import EOS_CONVENTIONS


def extra_models(config_path: str | None, given: list[str] | None) -> list[dict[str, Any]] | None:
    """The config's models followed by one entry per ``--model`` (named after its folder), or None if none given."""
    if not given:
        return None
    models = list(load_config(config_path)["models"]) if config_path else []
    return models + [{"name": Path(m).name or str(m), "checkpoint": m} for m in given]


def benchmark_main(argv: list[str]) -> None:
    """``flowzoo benchmark --config benchmarks/<name>.yaml [--output DIR] [...]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="flowzoo benchmark", description="Quality, NFE, wall-clock and memory of every checkpoint x sampler setting.")
    parser.add_argument("--config", help="benchmark YAML (see docs/benchmark.md); optional with --model")
    parser.add_argument("--model", action="append", dest="models_given", metavar="DIR",
                        help="also benchmark this model (a save_pretrained or imported folder, Hub repo id or .ckpt) with its own sampler; repeatable")
    parser.add_argument("--length", type=int, help="sequence length (default: the first model's training length)")
    parser.add_argument("--output", help="output directory (default: the config's 'output')")
    parser.add_argument("--num-samples", dest="num_samples", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--device", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--judge", help="a transformers causal LM (name or directory) or a flowzoo AR checkpoint")
    parser.add_argument("--judge-text", dest="judge_text", choices=JUDGE_TEXTS,
                        help="the text the judge reads: decode (the data's own, default) or raw (special tokens as strings, MDLM/Duo)")
    parser.add_argument("--judge-eos", dest="judge_eos", choices=EOS_CONVENTIONS,
                        help="the judge's EOS: all scored (default), first (later EOS not scored, MDLM/Duo) or truncate (cut at the first)")
    parser.add_argument("--prompts-from", dest="prompts_from",
                        help="add conditional rows: 'validation' (held-out rows' first --prompt-len tokens) or a file of prompts, one per line")
    parser.add_argument("--prompt-len", dest="prompt_len", type=int, help="known tokens per prompt (default 8)")
    parser.add_argument("--save-samples", dest="save_samples", action="store_true", default=None,
                        help="also write samples.json.gz (the texts each row's judge read), so --rescore can score them under another judge")
    parser.add_argument("--rescore", metavar="DIR",
                        help="score the samples a finished run kept in DIR (its save_samples) under --judge into --output; no model is loaded")
    args = parser.parse_args(argv)
    if args.rescore is not None:
        rescore_main(parser, args)
        return
    if args.config is None and not args.models_given:
        parser.error("give --config or at least one --model")
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "models_given", "rescore")}
    config = load_config(args.config, **overrides, models=extra_models(args.config, args.models_given))
    from flowzoo.devices import resolve_device
    from flowzoo.outputs import check_output_dir

    resolve_device(config["device"], "--device")  # before any model is loaded or row computed
    check_output_dir(config["output"], "--output")
    results = run(config, output=config["output"])
    paths = write(results, config["output"])
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


RESCORE_OPTIONS = ("rescore", "judge", "judge_eos", "judge_text", "output", "device", "threads")


def rescore_main(parser, args) -> None:
    """``flowzoo benchmark --rescore DIR --judge J --output OUT``: see :mod:`flowzoo.rescore`."""
    from flowzoo.devices import resolve_device
    from flowzoo.outputs import check_output_dir
    from flowzoo.rescore import copy_samples, rescore

    given = sorted(k for k, v in vars(args).items() if v not in (None, [], False) and k not in RESCORE_OPTIONS)
    if given:
        parser.error(f"--rescore re-scores kept samples and takes only --judge, --judge-eos, --judge-text, --output, --device, "
                     f"--threads; not: {', '.join('--' + k.replace('_', '-').replace('models-given', 'model') for k in given)}")
    if args.judge is None or args.output is None:
        parser.error("--rescore needs --judge (the new judge) and --output (a folder for the re-scored table)")
    if Path(args.output).resolve() == Path(args.rescore).resolve():
        parser.error("--output is the folder being re-scored: write the re-scored table elsewhere, the original stays as measured")
    device = resolve_device(args.device or "cpu", "--device")
    check_output_dir(args.output, "--output")
    results = rescore(args.rescore, args.judge, judge_eos=args.judge_eos, judge_text=args.judge_text, device=str(device),
                      threads=args.threads)
    paths = write(results, args.output)
    copy_samples(args.rescore, args.output)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
