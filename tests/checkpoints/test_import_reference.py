"""Importing published MDLM / Duo / FLM checkpoints: every reference fixture reproduced to 1e-5 by the imported model.

The fixtures (tests/fixtures/reference, see its README) hold tiny random weights under the reference code's own
key names, the exact inputs and the reference implementation's float32 outputs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowzoo import FlowLM
from flowzoo.checkpoints.importer import import_checkpoint, load_backbone
from flowzoo.cli import main
from flowzoo.errors import CheckpointError

REF = Path(__file__).parent.parent / "fixtures" / "reference"
TOL = 1e-5


def case(name):
    return load_file(REF / name / "inputs.safetensors"), load_file(REF / name / "expected.safetensors")


def close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= TOL, err
    return err


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each fixture imported through the command line, as a user would."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in ("mdlm_dit", "duo_dit", "flm_dit", "flm_flowmap_dit"):
        assert main(["import", str(REF / name), "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


def test_mdlm_reproduced_through_flowlm(imported):
    inputs, expected = case("mdlm_dit")
    model = FlowLM.from_pretrained(imported["mdlm_dit"])
    assert model.vocab_size == 50 and model.path.registry_name == "masked" and model.path.time_conditioning
    assert model.sampler.registry_name == "ancestral" and model.objective.registry_name == "mdlm"
    with torch.no_grad():
        # flowzoo time t = 1 - MDLM time; the masked path's network time times the backbone's time_scale is MDLM's sigma
        logits = model.logits(inputs["indices"], 1 - inputs["t"])
        close(logits, expected["logits"][..., :50])  # the [MASK] output column is never a prediction
        close(model.backbone.forward_all(inputs["indices"], inputs["sigma"] / -math.log(1e-3)), expected["logits"])
        model.path.time_conditioning = False  # MDLM's default: the network sees sigma = 0
        close(model.logits(inputs["indices"], 1 - inputs["t"]), expected["logits_uncond"][..., :50])
        out = model.generate(2, 8, sampler={"name": "ancestral", "init_args": {"steps": 4}}, seed=0)
    assert out.tokens.shape == (2, 8) and int(out.tokens.max()) < 50


def test_duo_reproduced_through_flowlm_on_the_uniform_path(imported):
    inputs, expected = case("duo_dit")
    model = FlowLM.from_pretrained(imported["duo_dit"])
    assert (model.path.registry_name, model.objective.registry_name, model.sampler.registry_name) == ("uniform", "duo", "uniform_ancestral")
    t = 1 - inputs["t"]  # flowzoo time; the uniform path's network time times time_scale is Duo's sigma = -log alpha
    with torch.no_grad():
        close(model.logits(inputs["indices"], t), expected["logits"])
        close(model.logits(inputs["x_soft"], t), expected["logits_soft"])
        sigma = inputs["sigma"] / -math.log(1e-3)  # the backbone multiplies its time by time_scale = -log eps
        close(model.backbone(inputs["topk_indices"], sigma, weights=inputs["topk_weights"]), expected["logits_topk"])
        out = model.generate(2, 8, sampler={"name": "uniform_ancestral", "init_args": {"steps": 3}}, seed=0)
    assert out.tokens.shape == (2, 8) and out.nfe == 4
    backbone = load_backbone(imported["duo_dit"])  # the network alone, from the same folder
    with torch.no_grad():
        close(backbone(inputs["indices"], inputs["sigma"] / -math.log(1e-3)), expected["logits"])
    model.train()
    loss = model.objective(model, inputs["x0"])["loss"]  # Duo's NELBO, without its curriculum
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and model.backbone.vocab_embed.embedding.grad is not None


def test_flm_flow_reproduced_through_flowlm(imported):
    inputs, expected = case("flm_dit")
    model = FlowLM.from_pretrained(imported["flm_dit"])
    assert model.path.registry_name == "linear" and model.path.time == "tau" and model.sampler.registry_name == "euler"
    with torch.no_grad():
        close(model.backbone(inputs["x_t"], inputs["sigma"]), expected["logits"])
        # FLM's path time is gamma = c_t, its network time alpha(gamma) = flowzoo's tau(gamma)
        close(model.logits(inputs["x_t"], inputs["c_t"]), expected["logits"])


def test_flm_flow_map_reproduced_through_flowlm(imported):
    inputs, expected = case("flm_flowmap_dit")
    model = FlowLM.from_pretrained(imported["flm_flowmap_dit"])
    assert model.sampler.registry_name == "flow_map" and model.backbone.sigma_map_prime is not None
    with torch.no_grad():
        # FLM's forward(x_t, t, t + d) is flowzoo's map from source s = c_t to target t = c_s
        close(model.backbone(inputs["x_t"], inputs["sigma_prime"], inputs["sigma"]), expected["logits"])
        close(model.logits(inputs["x_t"], inputs["c_s"], inputs["c_t"]), expected["logits"])
        close(model.backbone.loss_weight(inputs["t"]), expected["loss_weight"])
        out = model.generate(2, 8, seed=0)
    assert out.tokens.shape == (2, 8) and out.nfe == 1


def test_imported_folder_is_a_flowzoo_folder(imported):
    folder = imported["flm_dit"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["backbone"]["name"] == "ddit" and config["imported"]["kind"] == "flm"
    assert config["imported"]["reference"]["repo"] == "david3684/flm"
    resaved = folder.parent / "resaved"
    FlowLM.from_pretrained(folder).save_pretrained(resaved)  # the provenance survives a re-save
    assert json.loads((resaved / "config.json").read_text())["imported"]["kind"] == "flm"


def hub_mdlm_folder(tmp_path: Path, with_buffer: bool) -> Path:
    """MDLM's Hub layout (kuleshov-group/mdlm-owt): a transformers config and ``backbone.``-prefixed safetensors."""
    folder = tmp_path / "mdlm-owt"
    folder.mkdir()
    state = {f"backbone.{k}": v for k, v in load_file(REF / "mdlm_dit" / "model.safetensors").items()
             if with_buffer or k != "rotary_emb.inv_freq"}
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mdlm", "architectures": ["MDLM"], "hidden_dim": 48, "cond_dim": 32, "n_blocks": 2, "n_heads": 3,
        "vocab_size": 51, "model_length": 16, "dropout": 0.1, "time_conditioning": False,
    }))
    return folder


@pytest.mark.parametrize("with_buffer", [True, False])
def test_hub_mdlm_format_loads_directly_with_from_pretrained(tmp_path, with_buffer):
    inputs, expected = case("mdlm_dit")
    model = FlowLM.from_pretrained(hub_mdlm_folder(tmp_path, with_buffer))  # detected and converted in memory
    assert not model.path.time_conditioning and model.vocab_size == 50
    with torch.no_grad():
        close(model.logits(inputs["indices"], 1 - inputs["t"]), expected["logits_uncond"][..., :50])


def test_hub_mdlm_import_cli_writes_safetensors(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="without tokenizer"):  # gpt2 is not in the offline test cache
        assert main(["import", str(hub_mdlm_folder(tmp_path, True)), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vocab_size"] == 50 and report["imported"]["tokenizer"] == "gpt2"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin")) and not list(out.glob("*.ckpt"))


def lightning_ckpt(tmp_path: Path, name: str, objects: bool) -> Path:
    """A checkpoint laid out as the reference code's Lightning modules write it: ``backbone.`` keys (one through
    torch.compile's ``_orig_mod``), a teacher, EMA shadow parameters holding the real weights (the raw ones are
    perturbed), and the OmegaConf config in hyper_parameters. ``objects`` adds a non-tensor object to the pickle."""
    config = json.loads((REF / name / "config.json").read_text())
    weights = load_file(REF / name / "model.safetensors")
    params = config["named_parameters_order"]  # the order the EMA list follows
    state = {f"backbone.{k}": v + (0.5 if k in params else 0.0) for k, v in weights.items()}
    first = params[0]
    state[f"backbone._orig_mod.{first}"] = state.pop(f"backbone.{first}")
    state["teacher_model_f.vocab_embed.embedding"] = torch.zeros(3)
    hparams = {"config": config["reference_config"]}
    if objects:
        hparams["tokenizer"] = argparse.Namespace(name="stand-in for a pickled tokenizer object")
    ckpt = {"state_dict": state, "ema": {"shadow_params": [weights[k] for k in params]}, "hyper_parameters": hparams, "global_step": 7}
    path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


def test_parameter_order_is_the_references(imported):
    from flowzoo.checkpoints.reference import parameter_order

    for name, folder in imported.items():
        config = json.loads((folder / "config.json").read_text())
        assert parameter_order(config) == json.loads((REF / name / "config.json").read_text())["named_parameters_order"]


def test_pickle_refused_without_trust_pickle(tmp_path, capsys):
    path = lightning_ckpt(tmp_path, "flm_flowmap_dit", objects=False)
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" in err[0] and "--trust-pickle" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("objects", [False, True])
def test_trusted_pickle_converts_with_ema(tmp_path, objects):
    inputs, expected = case("flm_flowmap_dit")
    out = import_checkpoint(lightning_ckpt(tmp_path, "flm_flowmap_dit", objects), tmp_path / "out", trust_pickle=True)
    config = json.loads((out / "config.json").read_text())
    assert config["imported"]["ema"] and config["imported"]["global_step"] == 7
    assert config["imported"]["loaded_with"] == ("full unpickling (--trust-pickle)" if objects else "weights_only")
    model = FlowLM.from_pretrained(out)
    with torch.no_grad():
        close(model.logits(inputs["x_t"], inputs["c_s"], inputs["c_t"]), expected["logits"])
    raw = import_checkpoint(lightning_ckpt(tmp_path, "flm_flowmap_dit", False), tmp_path / "raw", trust_pickle=True, use_ema=False)
    with torch.no_grad():  # the raw (perturbed) weights are not the EMA ones
        assert (FlowLM.from_pretrained(raw).logits(inputs["x_t"], inputs["c_s"], inputs["c_t"]) - expected["logits"]).abs().max() > 0.1


def test_other_noise_schedule_refused(tmp_path):
    import shutil

    folder = tmp_path / "geometric"
    shutil.copytree(REF / "mdlm_dit", folder)
    config = json.loads((folder / "config.json").read_text())
    config["reference_config"]["noise"]["type"] = "geometric"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="log-linear schedule only"):
        import_checkpoint(folder, tmp_path / "out")


def test_not_importable_folder_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not an importable checkpoint"):
        import_checkpoint(tmp_path, tmp_path / "out")


# --- benchmarking an imported model beside flowzoo's own ----------------------------------------
def word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok)  # no special tokens: every id decodes to its word


def test_benchmark_imported_model_beside_flowzoos_own(tmp_path):
    """``flowzoo benchmark --model DIR`` on an imported FLM flow map and a flowzoo flow, same protocol: GenPPL under a
    transformers judge (a tiny local GPT-2 standing in for GPT-2 Large), entropy, NFE, time, memory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    words = [f"w{i}" for i in range(50)]
    tokenizer = word_tokenizer(words)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    imported = tmp_path / "fmlm"
    assert main(["import", str(REF / "flm_flowmap_dit"), "--out", str(imported), "--tokenizer", str(tmp_path / "tokenizer")]) == 0
    assert (imported / "tokenizer.json").is_file()

    class Holder:  # the tokenizer for save_pretrained, as a data module would give it
        pass

    holder = Holder()
    holder.tokenizer = tokenizer
    own = FlowLM(vocab_size=50, backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}},
                 sampler={"name": "euler", "init_args": {"steps": 3}})
    torch.nn.init.normal_(own.backbone.unembed.weight)  # untrained, but not the constant zero-init output
    own.save_pretrained(tmp_path / "own", datamodule=holder)
    judge = tmp_path / "judge"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(judge)
    tokenizer.save_pretrained(judge)

    out = tmp_path / "bench"
    assert main(["benchmark", "--model", str(imported), "--model", str(tmp_path / "own"), "--length", "16", "--num-samples", "4",
                 "--batch-size", "2", "--repeats", "1", "--judge", str(judge), "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert set(rows) == {"fmlm", "own"}
    assert rows["fmlm"]["nfe"] == 1 and rows["own"]["nfe"] == 3
    for row in rows.values():
        assert math.isfinite(row["metrics"]["gen_ppl"]) and row["metrics"]["gen_ppl"] > 1
        assert row["metrics"]["entropy"] > 0 and row["tokens_per_second"] > 0 and row["peak_memory_mib"] is not None
        assert set(row["example"].split()) <= set(words)
    assert results["models"]["fmlm"]["config"]["backbone"]["name"] == "ddit"


def test_hub_repo_id_from_the_offline_cache(tmp_path, monkeypatch):
    """``kuleshov-group/mdlm-owt`` by repo id: MDLM's Hub snapshot in the HF cache (HF_HUB_OFFLINE=1), converted on
    load by ``FlowLM.from_pretrained`` and by ``flowzoo import``; a pickle in the repo is never read."""
    import huggingface_hub
    from helpers import populate_cache

    folder = hub_mdlm_folder(tmp_path, True)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: a download of it would fail to load")
    cache = tmp_path / "hf_home" / "hub"
    populate_cache(cache, "kuleshov-group/mdlm-owt", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    inputs, expected = case("mdlm_dit")
    model = FlowLM.from_pretrained("kuleshov-group/mdlm-owt")
    with torch.no_grad():
        close(model.logits(inputs["indices"], 1 - inputs["t"]), expected["logits_uncond"][..., :50])
    with pytest.warns(UserWarning, match="without tokenizer"):
        assert main(["import", "kuleshov-group/mdlm-owt", "--out", str(tmp_path / "out")]) == 0
    with torch.no_grad():
        close(FlowLM.from_pretrained(tmp_path / "out").logits(inputs["indices"], 1 - inputs["t"]), expected["logits_uncond"][..., :50])
