"""save_pretrained / from_pretrained: round trips for every model kind, and refusal of bad checkpoints."""

import inspect
import json

import pytest
import torch
import yaml
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


# --- the card names a Hub data set only when the data came from the Hub ------------------------
def _card_of(tmp_path, model, data_spec):
    from huggingface_hub import ModelCard

    model.data_spec = data_spec
    model.hub_metadata = {"metrics": {"word_validity": 0.5}}
    markov = registry.build("data", DATA)  # tokenizer files from a data module that needs no network
    directory = save_pretrained(model, tmp_path / "card", datamodule=markov)
    return ModelCard.load(directory / "README.md")


def _hub_spec(**args):
    from flowzoo.data.hub_text import HubTextData

    return registry.spec(HubTextData(tokenizer="gpt2", **args))  # lazy: nothing is downloaded or read


@pytest.mark.parametrize("dataset", ["roneneldan/TinyStories", "wikitext"])
def test_card_names_a_hub_data_set(tmp_path, flow, dataset):
    card = _card_of(tmp_path, flow[0], _hub_spec(dataset=dataset))
    assert card.data.datasets == [dataset]
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {(dataset, dataset)}
    assert yaml.safe_load(card.content.split("---")[1])["datasets"] == [dataset]  # the YAML header itself


LOCAL = {
    "json-builder": lambda tmp: {"dataset": "json", "data_files": {"train": str(tmp / "train.jsonl"), "validation": str(tmp / "val.jsonl")}},
    "text-builder": lambda tmp: {"dataset": "text", "data_files": str(tmp / "corpus.txt")},
    "parquet-builder": lambda tmp: {"dataset": "parquet", "data_files": [str(tmp / "a.parquet")]},
    "absolute-file": lambda tmp: {"dataset": str(tmp / "corpus.txt")},
    "relative-file": lambda tmp: {"dataset": "data/corpus.txt"},
    "relative-folder": lambda tmp: {"dataset": "corpora/books"},  # looks like org/name, but is a folder here
}


@pytest.mark.parametrize("case", LOCAL, ids=list(LOCAL))
def test_card_names_no_hub_data_set_for_local_files(tmp_path, flow, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpora" / "books").mkdir(parents=True)
    spec = _hub_spec(**LOCAL[case](tmp_path))
    card = _card_of(tmp_path, flow[0], spec)
    assert card.data.datasets is None, card.data.datasets
    header = yaml.safe_load(card.content.split("---")[1])
    assert "datasets" not in header
    (result,) = [r for entry in header["model-index"] for r in entry["results"]]
    assert result["dataset"] == {"name": "flowzoo hub data", "type": "flowzoo/hub"}  # not "json", not a path
    # the figures are still on the card, credited to flowzoo's own data module
    assert {(r.dataset_type, r.metric_type) for r in card.data.eval_results} == {("flowzoo/hub", "word_validity")}
    assert card.data.tags and "flowzoo-data-hub" in card.data.tags


# --- a Lightning checkpoint whose pickle would run code ------------------------------------------
def _touch(path):  # what unpickling the payload below would call; harmless, and leaves a trace if it ever runs
    with open(path, "w") as f:
        f.write("unpickled")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _pickled_ckpt(tmp_path, model):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "last.ckpt"
    # otherwise a loadable flowzoo checkpoint: only the extra object makes it unsafe
    torch.save({"flowzoo": model.config(), "state_dict": model.state_dict(), "global_step": 1, "callbacks": Payload(marker)}, path)
    return path, marker


def test_a_ckpt_whose_pickle_holds_an_object_is_refused(tmp_path, flow):
    path, marker = _pickled_ckpt(tmp_path, flow[0])
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert f"refused checkpoint {path}" in message and "test_checkpoints._touch" in message
    assert "weights_only=True" in message and "\n" not in message and "\x1b" not in message  # one plain line
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no UnpicklingError chain shown
    assert not marker.exists()  # nothing ran
    torch.save({"flowzoo": flow[0].config(), "state_dict": flow[0].state_dict()}, tmp_path / "clean.ckpt")
    assert isinstance(load_checkpoint(tmp_path / "clean.ckpt"), FlowLM)  # the same checkpoint without it loads


def test_flowzoo_sample_refuses_the_pickled_ckpt_in_one_line(tmp_path, flow, capsys):
    from flowzoo.cli import main

    path, marker = _pickled_ckpt(tmp_path, flow[0])
    assert main(["sample", "--checkpoint", str(path), "--num-samples", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowzoo: error: refused checkpoint") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists()


def test_a_ckpt_that_is_no_torch_file_is_one_clear_line(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"garbage, not a pickle")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*last.ckpt: UnpicklingError: ") as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value) and "refused" not in str(refused.value)
