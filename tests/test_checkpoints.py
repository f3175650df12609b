"""save_pretrained / from_pretrained: round trips for every model kind, and refusal of bad checkpoints."""

import inspect
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowzoo import registry
from flowzoo.checkpoints import from_pretrained, load_checkpoint, load_tokenizer, save_pretrained
from flowzoo.checkpoints.pretrained import HUB_FILES, load_state
from flowzoo.errors import CheckpointError
from flowzoo.module import FlowLM

TINY = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}
DATA = {"name": "markov", "init_args": {"num_states": 16, "seq_len": 8, "num_train": 8, "num_val": 8}}


def _spec(kind: str, name: str, **args) -> dict:
    """A component spec, with ``steps=2`` for samplers that take it (fast sampling)."""
    accepted = inspect.signature(registry.get(kind, name)).parameters
    return {"name": name, "init_args": {k: v for k, v in args.items() if k in accepted}}


def build_tiny(objective: str, head: str) -> FlowLM | None:
    """The first compatible tiny model with this objective and head (any path, sampler, causal or not), or None."""
    for causal in (False, True):
        for path in registry.names("path"):
            for sampler in registry.names("sampler"):
                try:
                    model = FlowLM(
                        backbone={"name": "dit", "init_args": {**TINY, "causal": causal}},
                        path=path,
                        head=head,
                        objective=objective,
                        sampler=_spec("sampler", sampler, steps=2),
                        vocab_size=16,
                    )
                except (ValueError, TypeError, KeyError):  # incompatible combination (or needs arguments)
                    continue
                model.data_spec = DATA
                return model
    return None


KINDS = [(o, h) for o in registry.names("objective") for h in registry.names("head")]


@pytest.fixture
def flow(tmp_path):
    model = build_tiny("flow_matching", "categorical")
    return model, save_pretrained(model, tmp_path / "model")


@pytest.mark.parametrize("objective,head", KINDS, ids=[f"{o}-{h}" for o, h in KINDS])
def test_round_trip_gives_the_same_model_and_samples(tmp_path, objective, head):
    torch.manual_seed(0)
    model = build_tiny(objective, head)
    if model is None:
        pytest.skip(f"no compatible model with objective {objective} and head {head}")
    with torch.no_grad():  # non-zero adaLN weights, so a wrong load would change the outputs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    again = FlowLM.from_pretrained(tmp_path / "m")
    assert again.config() == model.config()
    state, loaded = model.state_dict(), again.state_dict()
    assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state)
    a, b = model.generate(3, 8, seed=1), again.generate(3, 8, seed=1)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe


def test_directory_holds_weights_config_tokenizer_and_card(flow):
    model, directory = flow
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((directory / "config.json").read_text())
    assert config["objective"]["name"] == "flow_matching" and config["backbone"]["init_args"]["width"] == 32
    assert config["flowzoo_version"] and config["data"] == DATA
    # the tokenizer decodes ids to the data module's words
    data = registry.build("data", DATA)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    assert load_tokenizer(directory).decode(ids[0].tolist()) == data.decode(ids)[0]
    assert from_pretrained(directory).tokenizer.encode(data.decode(ids)[0]).ids == ids[0].tolist()


def test_model_card_metadata(flow):
    from huggingface_hub import ModelCard

    model, directory = flow
    card = ModelCard.load(directory / "README.md")
    assert card.data.library_name == "flowzoo"
    assert {"flowzoo", "flow-matching", "flowzoo-data-markov"} <= set(card.data.tags)
    assert "| objective | `flow_matching` |" in card.text


def test_training_steps_and_figures_reach_config_and_card(tmp_path, flow):
    from huggingface_hub import ModelCard

    model, _ = flow
    model.hub_metadata = {"training": {"global_step": 123, "epoch": 2}, "metrics": {"valid_transitions": 0.75, "nfe": 2}}
    directory = save_pretrained(model, tmp_path / "with_figures")
    card = ModelCard.load(directory / "README.md")
    assert card.data.to_dict()["training_steps"] == 123
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"valid_transitions": 0.75}  # NFE describes the run
    assert "| valid_transitions | 0.75 |" in card.text and "NFE 2" in card.text
    assert from_pretrained(directory).hub_metadata["training"]["global_step"] == 123  # kept for re-publishing


def test_lightning_checkpoint_loads_with_its_training_step(tmp_path, flow):
    model, _ = flow
    path = tmp_path / "last.ckpt"
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict(), "global_step": 9, "epoch": 1}, path)
    loaded = load_checkpoint(path)
    assert loaded.hub_metadata["training"] == {"global_step": 9, "epoch": 1}
    assert torch.equal(loaded.generate(2, 8, seed=0).tokens, model.generate(2, 8, seed=0).tokens)


# --- refusals -------------------------------------------------------------------------
def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (directory / "config.json").write_text(json.dumps(config))


def test_truncated_weights_are_refused(flow):
    _, directory = flow
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        from_pretrained(directory)


def test_missing_weights_are_refused_even_beside_a_pickle(flow):
    _, directory = flow
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        from_pretrained(directory)


def test_hub_downloads_never_include_pickles():
    from huggingface_hub.utils import filter_repo_objects

    repo = ["config.json", "model.safetensors", "README.md", "tokenizer.json", "pytorch_model.bin", "last.ckpt", "model.pt", "x.pkl"]
    assert sorted(filter_repo_objects(repo, allow_patterns=HUB_FILES)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_bad_json_is_refused(flow):
    _, directory = flow
    (directory / "config.json").write_text('{"vocab_size": 16,')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(directory)


@pytest.mark.parametrize("change", [{"backbone.init_args.width": 64}, {"vocab_size": 17}])
def test_shapes_that_do_not_match_the_config_are_refused(flow, change):
    _, directory = flow
    _edit_config(directory, **change)
    with pytest.raises(CheckpointError, match="do not match the config.*shape mismatch"):
        from_pretrained(directory)


def test_extra_or_missing_tensors_are_refused(flow):
    _, directory = flow
    state = load_file(directory / "model.safetensors")
    state["intruder"] = torch.zeros(1)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected \\['intruder'\\]"):
        from_pretrained(directory)


def test_unknown_component_is_refused(flow):
    _, directory = flow
    _edit_config(directory, **{"objective.name": "telepathy"})
    with pytest.raises(CheckpointError, match="unknown objective 'telepathy'"):
        from_pretrained(directory)


@pytest.mark.parametrize("version", ["0.99.0", "1.0.0"])
def test_newer_version_is_refused(flow, version):
    _, directory = flow
    _edit_config(directory, flowzoo_version=version)
    with pytest.raises(CheckpointError, match=f"flowzoo {version}.*upgrade flowzoo"):
        from_pretrained(directory)


def test_a_refused_state_leaves_the_model_untouched(flow):
    model, _ = flow
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: torch.ones_like(v) for k, v in before.items()}
    first = next(iter(bad))
    bad[first] = torch.ones(3, 3, 3)
    with pytest.raises(CheckpointError):
        load_state(model, bad, "test")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_file_or_a_nonsense_name_is_refused(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        from_pretrained(tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="neither a local directory nor a Hub repo id"):
        from_pretrained("no/such/dir")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
