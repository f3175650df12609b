"""The pretrained-model examples of docs/pretrained.md and of the README, run as written against (1) a local
save_pretrained folder and (2) a repo id in a pre-populated Hugging Face cache with HF_HUB_OFFLINE=1
(the fixture of tests/checkpoints/conftest.py).

In docs/pretrained.md an example is the fenced block right after a ``<!-- example: NAME -->`` comment; in the
README, the ```python block of its "Pretrained models" section and the ``flowzoo sample --model`` command written
beside it. ``org/name`` in an example stands for the model and is replaced by the folder or the repo id.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, tiny_model

from flowzoo import registry
from flowzoo.checkpoints import save_pretrained
from flowzoo.cli import main
from flowzoo.sampling import sample_from_checkpoint

DOC = Path(__file__).parents[2] / "docs" / "pretrained.md"
README = Path(__file__).parents[2] / "README.md"
PLACEHOLDER = "org/name"
_EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```(\w+)\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    found = {name: code for name, _, code in _EXAMPLE.findall(DOC.read_text())}
    assert {"python", "cli", "publish"} <= set(found), f"docs/pretrained.md lost a marked example: {sorted(found)}"
    return found


def readme_examples() -> dict[str, str]:
    """The README's "Pretrained models" section: its python block, and its ``flowzoo sample --model`` command."""
    text = README.read_text()
    start = text.index("## Pretrained models")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    cli = re.findall(r"`(flowzoo sample --model [^`]*)`", section)
    assert len(python) == 1 and len(cli) == 1, "README.md's Pretrained models section lost its python example or its sample command"
    return {"python": python[0], "cli": cli[0]}


SOURCES = {"docs": (examples, DOC), "readme": (readme_examples, README)}


@pytest.mark.parametrize("source", SOURCES)
def test_the_python_example_is_two_lines_after_the_import(source):
    found, _ = SOURCES[source]
    lines = [line for line in found()["python"].splitlines() if line.strip() and not line.startswith(("from ", "import "))]
    assert len(lines) == 2 and PLACEHOLDER in lines[0]


def run_python_example(target: str, capsys, source: str = "docs") -> list[str]:
    found, doc = SOURCES[source]
    code = found()["python"].replace(PLACEHOLDER, target)
    exec(compile(code, str(doc), "exec"), {"__name__": "__example__"})
    printed = capsys.readouterr().out.strip()
    texts = eval(printed, {})  # the example prints a list of 8 decoded strings
    assert isinstance(texts, list) and len(texts) == 8 and all(isinstance(t, str) for t in texts)
    return texts


def run_cli_example(target: str, env: dict, source: str = "docs") -> dict:
    found, _ = SOURCES[source]
    argv = shlex.split(found()["cli"].replace(PLACEHOLDER, target))
    assert argv[0] == "flowzoo"
    out = subprocess.run([sys.executable, "-m", "flowzoo", *argv[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.index("\n{") + 1 :])
    assert report["nfe"] == 1 and report["sampler"]["init_args"]["steps"] == 1
    assert 0.0 <= report["metrics"]["valid_transitions"] <= 1.0
    return report


def expected_texts(model) -> list[str]:
    """What the Python example must print: the markov words of the model's own seed-0 samples."""
    data = registry.build("data", model.data_spec)
    return data.decode(model.generate(8, 32, seed=0).tokens)


@pytest.mark.parametrize("source", SOURCES)
def test_examples_against_a_local_folder(tmp_path, capsys, source):
    model = tiny_model()
    folder = save_pretrained(model, tmp_path / "my-model")
    assert run_python_example(str(folder), capsys, source) == expected_texts(model)
    run_cli_example(str(folder), {**os.environ, "OMP_NUM_THREADS": "1"}, source)


@pytest.mark.parametrize("source", SOURCES)
def test_examples_against_the_offline_cache(cached, capsys, source):
    assert run_python_example(REPO, capsys, source) == expected_texts(cached.model)
    env = {**os.environ, "HF_HOME": str(cached.hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    run_cli_example(REPO, env, source)


def test_the_publish_dry_run_example(tmp_path, monkeypatch, capsys):
    model = tiny_model()
    ckpt = tmp_path / "runs" / "markov_flow" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict(), "global_step": 5, "epoch": 0}, ckpt)
    monkeypatch.chdir(tmp_path)  # the example's relative paths
    argv = shlex.split(examples()["publish"])
    assert argv[:2] == ["flowzoo", "publish"] and "--output-dir" in argv
    assert main(argv[1:]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uploaded"] is False and report["repo_id"] == PLACEHOLDER
    assert report["files"] == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    folder = tmp_path / argv[argv.index("--output-dir") + 1]
    assert json.loads((folder / "config.json").read_text())["training"]["global_step"] == 5
    assert run_python_example(str(folder), capsys) == expected_texts(model)


def test_sample_decodes_with_the_shipped_tokenizer_when_the_corpus_is_absent(tmp_path):
    """A model pulled onto a machine without its training corpus still samples text (no metrics)."""
    from flowzoo.data.shakespeare import ShakespeareData
    from flowzoo.module import FlowLM

    corpus = tmp_path / "sonnets.txt"
    corpus.write_text((Path(__file__).parents[1] / "fixtures" / "sonnets_excerpt.txt").read_text())
    data = ShakespeareData(text_files=[str(corpus)], cache_dir=str(tmp_path / "cache"), seq_len=16)
    model = FlowLM(
        backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}},
        sampler={"name": "euler", "init_args": {"steps": 2}},
        vocab_size=data.vocab_size,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.data_spec = registry.spec(data)
    folder = save_pretrained(model, tmp_path / "model", datamodule=data)
    with_corpus = sample_from_checkpoint(str(folder), num_samples=3)
    assert "word_validity" in with_corpus["metrics"]
    corpus.unlink()  # as on a machine that only pulled the model
    for f in sorted((tmp_path / "cache").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    without = sample_from_checkpoint(str(folder), num_samples=3)
    assert without["texts"] == with_corpus["texts"]
    assert "metrics" not in without and "training data is not available" in without["note"]
