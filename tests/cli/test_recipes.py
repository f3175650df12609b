"""The published recipes (configs/owt_*.yaml, configs/lm1b_*.yaml): the stated parameter counts are the built
model's, and each config trains two steps at a tiny size on a local corpus with a local tokenizer (no download)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from flowzoo import FlowLM, registry
from flowzoo.cli import main

ROOT = Path(__file__).parents[2]
RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name.startswith(("owt_", "lm1b_")))
KINDS = ("backbone", "path", "head", "objective", "sampler")
VOCAB = {"gpt2": 50257, "bert-base-uncased": 30522}
TINY = ["--model.backbone.init_args.width=32", "--model.backbone.init_args.depth=1", "--model.backbone.init_args.heads=2",
        "--model.backbone.init_args.cond_dim=16"]


def test_every_recipe_is_there():
    assert {p.stem for p in RECIPES} == {f"{c}_{k}" for c in ("owt", "lm1b") for k in ("mdlm", "flow", "flow_map", "ar")}


def spec(node) -> dict:
    if isinstance(node, str):
        return {"class_path": node, "init_args": {}}
    return {"class_path": node["class_path"], "init_args": dict(node.get("init_args") or {})}


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.stem)
def test_paper_settings_and_parameter_count(config):
    text = config.read_text()
    written = yaml.safe_load(text)
    trainer, model, data = written["trainer"], written["model"], written["data"]["init_args"]
    corpus = config.stem.split("_")[0]
    assert data["seq_len"] == {"owt": 1024, "lm1b": 128}[corpus]
    assert data["tokenizer"] == {"owt": "gpt2", "lm1b": "bert-base-uncased"}[corpus]
    assert data["batch_size"] * trainer["accumulate_grad_batches"] * trainer["devices"] == 512  # the global batch
    assert model["lr"] == 3e-4 and trainer["precision"] == "bf16-mixed"
    assert any(c["class_path"] == "flowzoo.callbacks.EMA" and c["init_args"]["decay"] == 0.9999 for c in trainer["callbacks"])
    args = spec(model["backbone"])["init_args"]
    assert (args["width"], args["depth"], args["heads"]) == (768, 12, 12)
    with torch.device("meta"):  # DiT-small at full size, no memory
        built = FlowLM(vocab_size=VOCAB[data["tokenizer"]], **{k: spec(model[k]) for k in KINDS})
    count = sum(p.numel() for p in built.parameters())
    stated = re.search(r"-> ([\d,]+)\s*#?\s*parameters", text)
    assert stated and int(stated.group(1).replace(",", "")) == count, (count, stated and stated.group(1))


@pytest.fixture(scope="module")
def local_text(tmp_path_factory):
    """A local corpus (one document per line) and a local word-level tokenizer folder (transformers format)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("recipes")
    lines = [line.strip() for line in (ROOT / "tests" / "fixtures" / "sonnets_excerpt.txt").read_text().splitlines() if line.strip()]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines * 4) + "\n")
    vocab = {w: i for i, w in enumerate(["[UNK]", "[SEP]", *sorted({w for line in lines for w in line.split()})])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = root / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", eos_token="[SEP]").save_pretrained(folder)
    return corpus, folder


def two_steps(config: Path, root: Path, corpus: Path, tokenizer: Path, extra=()) -> Path:
    out = root / config.stem
    argv = [
        "fit", "--config", str(config), *TINY,
        "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
        f"--data.dataset={corpus}", f"--data.tokenizer={tokenizer}", "--data.seq_len=16", "--data.batch_size=2",
        "--data.val_documents=4", "--data.shuffle_buffer=8", *extra,
    ]
    if "validation_split" in config.read_text():
        argv.append("--data.validation_split=null")  # the local file has one split: hold documents out of it
    assert main(argv) == 0
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return last


@pytest.mark.parametrize("corpus_name", ["owt", "lm1b"])
def test_recipes_take_two_steps_on_local_files(tmp_path, local_text, corpus_name):
    corpus, tokenizer = local_text
    from flowzoo.checkpoints import load_checkpoint

    ckpts = {}
    for kind in ("mdlm", "flow", "ar"):
        ckpts[kind] = two_steps(ROOT / "configs" / f"{corpus_name}_{kind}.yaml", tmp_path, corpus, tokenizer)
        ckpt = torch.load(ckpts[kind], weights_only=True)
        assert ckpt["global_step"] == 2
    # the flow map is distilled from the flow just trained, initialised from it
    last = two_steps(ROOT / "configs" / f"{corpus_name}_flow_map.yaml", tmp_path, corpus, tokenizer,
                     [f"--model.objective.init_args.teacher={ckpts['flow']}"])
    student = load_checkpoint(last)
    assert student.backbone.sigma_map_prime is not None and bool(student.objective.teacher_copied)
    assert student.generate(2, 16, seed=0).tokens.shape == (2, 16)
    assert registry.spec(student.backbone)["name"] == "ddit"


def test_train_throughput_script_writes_its_table(tmp_path, monkeypatch):
    """benchmarks/train_throughput.py (the GPU measurement of the OWT flow beside MDLM) at a tiny size on the CPU."""
    import importlib.util
    import sys

    spec_ = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    out = tmp_path / "tp.md"
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1",
                                      "--batch-size", "2", "--seq-len", "16", "--output", str(out),
                                      "--configs", str(ROOT / "configs/owt_flow.yaml"), str(ROOT / "configs/owt_mdlm.yaml")])
    module.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| owt_")]
    assert [r.split("|")[1].strip() for r in rows] == ["owt_flow.yaml", "owt_mdlm.yaml"]
    assert all(float(r.split("|")[6].replace(",", "")) > 0 for r in rows)  # tokens / s
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--device", "cpu", "--tiny", "--configs", str(ROOT / "configs/owt_flow_map.yaml")])
    with pytest.raises(SystemExit, match="teacher"):
        module.main()


def test_stream_reshuffles_each_epoch_and_splits_between_ranks(local_text):
    from flowzoo.data.streaming import StreamingTextData

    corpus, tokenizer = local_text
    data = StreamingTextData(dataset=str(corpus), tokenizer=str(tokenizer), seq_len=8, batch_size=2, val_documents=4, shuffle_buffer=64)

    def rows(**kw):
        return [tuple(r["input_ids"].tolist()) for r in data.packed("train", **kw)]

    first, again, second = rows(epoch=0), rows(epoch=0), rows(epoch=1)
    assert first == again and first != second and sorted(first) != [] and len(first) == len(second)
    rank0, rank1 = rows(rank=0, world_size=2), rows(rank=1, world_size=2)
    assert rank0 and rank1 and rank0 != rank1  # each rank its own documents
    held_out = {tuple(r["input_ids"].tolist()) for r in data.packed("validation")}
    assert held_out and len(held_out) < len(set(first))
