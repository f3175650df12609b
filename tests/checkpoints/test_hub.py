"""The Hugging Face Hub side, without network: loading by repo id from the offline cache, and what
``push_to_hub`` / ``flowzoo publish`` would upload (HfApi calls mocked, the folder inspected)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.cli import main
from flowzoo.errors import CheckpointError
from flowzoo.module import FlowLM
from helpers import COMMIT, DATA, REPO, tiny_model


def test_the_cache_layout_is_what_huggingface_hub_reads(cached):
    info = huggingface_hub.scan_cache_dir(cached.cache)
    (repo,) = info.repos
    assert repo.repo_id == REPO and not info.warnings
    (revision,) = repo.revisions
    assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} == {"README.md", "config.json", "model.safetensors", "tokenizer.json"}


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
def test_load_by_repo_id_from_the_offline_cache(cached, revision):
    model = FlowLM.from_pretrained(REPO, revision=revision)
    assert model.config() == cached.model.config()
    assert torch.equal(model.generate(3, 8, seed=0).tokens, cached.model.generate(3, 8, seed=0).tokens)
    assert model.tokenizer is not None and len(model.tokenizer.get_vocab()) == 16


def test_the_function_form_loads_by_repo_id_too(cached):
    from flowzoo.sampling import sample_from_checkpoint

    result = sample_from_checkpoint(REPO, overrides={"steps": 1}, num_samples=4)
    assert result["nfe"] == 1 and len(result["texts"]) == 4 and "valid_transitions" in result["metrics"]
    assert from_pretrained(REPO).config() == cached.model.config()


def test_what_is_not_cached_is_refused_offline_with_a_clear_message(cached):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        FlowLM.from_pretrained("flowzoo-test/never-downloaded")
    with pytest.raises(CheckpointError, match="revision 'v2'.*not in the Hugging Face cache"):
        FlowLM.from_pretrained(REPO, revision="v2")


def test_a_truncated_cached_download_is_refused(cached):
    blob = (cached.cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        FlowLM.from_pretrained(REPO)


def test_cli_samples_by_repo_id_offline(cached):
    """``flowzoo sample --model org/name`` in a fresh process whose HF_HOME holds the download."""
    env = {**os.environ, "HF_HOME": str(cached.hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-m", "flowzoo", "sample", "--model", REPO, "--steps", "1", "--num-samples", "8", "--show", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["nfe"] == 1 and 0.0 <= report["metrics"]["valid_transitions"] <= 1.0


# --- what would be uploaded -----------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi.create_repo / upload_folder replaced: record the calls and a copy of the uploaded folder."""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
        calls["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        calls["weights"] = load_file(folder / "model.safetensors")
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_weights_config_tokenizer_and_card(fake_hub, tmp_path):
    model = tiny_model()
    url = model.push_to_hub(REPO, private=True)
    assert url.endswith(COMMIT)
    assert fake_hub["create_repo"]["repo_id"] == REPO and fake_hub["create_repo"]["private"] is True
    assert fake_hub["upload_folder"]["repo_id"] == REPO and fake_hub["upload_folder"]["repo_type"] == "model"
    files = fake_hub["files"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads(files["config.json"]) == model.config()
    state = model.state_dict()
    assert fake_hub["weights"].keys() == state.keys() and all(torch.equal(fake_hub["weights"][k], state[k]) for k in state)
    (tmp_path / "README.md").write_bytes(files["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "flowzoo" and card.data.model_name == REPO
    assert f"flowzoo sample --model {REPO}" in card.text
    words = json.loads(files["tokenizer.json"])["model"]["vocab"]
    from flowzoo import registry

    assert sorted(words, key=words.get) == registry.build("data", DATA).chain.words


def test_publish_a_lightning_checkpoint(fake_hub, tmp_path, capsys):
    model = tiny_model()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict(), "global_step": 42, "epoch": 3}, ckpt)
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"judge_nll": 3.25}))
    code = main(["publish", "--checkpoint", str(ckpt), "--repo-id", REPO, "--private", "--eval-samples", "8", "--metrics", str(figures)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["uploaded"] is True
    assert fake_hub["create_repo"]["private"] is True
    config = json.loads(fake_hub["files"]["config.json"])
    assert config["training"] == {"global_step": 42, "epoch": 3}
    assert config["metrics"]["nfe"] == 2 and config["metrics"]["num_samples"] == 8 and config["metrics"]["judge_nll"] == 3.25
    assert 0.0 <= config["metrics"]["valid_transitions"] <= 1.0
    (tmp_path / "README.md").write_bytes(fake_hub["files"]["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.to_dict()["training_steps"] == 42
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["judge_nll"] == 3.25 and results["valid_transitions"] == round(config["metrics"]["valid_transitions"], 4)
    assert "num_samples" not in results and "Measured with 8 samples, seed 0, sampler `euler(" in card.text


def test_publish_to_a_folder_only(tmp_path, capsys):
    directory = save_pretrained(tiny_model(), tmp_path / "model")
    out = tmp_path / "to_upload"
    assert main(["publish", "--checkpoint", str(directory), "--repo-id", REPO, "--eval-samples", "0", "--output-dir", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uploaded"] is False and report["files"] == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert FlowLM.from_pretrained(out).config() == FlowLM.from_pretrained(directory).config()


def test_publish_offline_is_one_clear_error(tmp_path, capsys):
    directory = save_pretrained(tiny_model(), tmp_path / "model")
    assert main(["publish", "--checkpoint", str(directory), "--repo-id", REPO, "--eval-samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err


def test_publish_takes_this_models_rows_of_a_benchmark(tmp_path, capsys):
    directory = save_pretrained(tiny_model(), tmp_path / "model")
    row = {"sampler_name": "flow_map", "steps": 1, "nfe": 1, "tokens_per_second": 900.0}
    results = {
        "name": "markov", "judge": None, "environment": {"device": "cpu"},
        "models": {"mine": {"checkpoint": str(directory)}, "other": {"checkpoint": str(tmp_path / "other.ckpt")}},
        "rows": [{"model": "mine", **row, "metrics": {"valid_transitions": 0.9}},
                 {"model": "other", **row, "metrics": {"valid_transitions": 0.1}}],
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "to_upload"
    args = ["publish", "--checkpoint", str(directory), "--repo-id", REPO, "--eval-samples", "0", "--output-dir", str(out)]
    assert main([*args, "--metrics", str(tmp_path / "results.json")]) == 0
    card = ModelCard.load(out / "README.md")
    results_on_card = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results_on_card == {"valid_transitions/flow_map-1": 0.9, "tokens_per_second/flow_map-1": 900.0}
    assert "flowzoo benchmark markov on cpu" in card.text
    # a results.json without this model is refused, naming the models it has
    capsys.readouterr()
    assert main([*args, "--metrics", str(tmp_path / "results.json"), "--benchmark-model", "nobody"]) == 2
    assert "mine, other" in capsys.readouterr().err
