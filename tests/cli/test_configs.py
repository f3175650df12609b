"""Every shipped config in configs/ parses with ``--print_config`` into registered, compatible components,
and the ``flowzoo fit --config`` commands written in the README and the Makefile resolve as they say.

``--print_config`` parses only: nothing is trained, no corpus is fetched and no teacher checkpoint is read
(configs/flowmap_markov_distill.yaml names one that only exists after stage 1 of its benchmark).
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from flowzoo import registry
from flowzoo.cli import main

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MODEL_KINDS = ("backbone", "path", "head", "objective", "sampler")


def print_config(argv, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--print_config"])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None), captured.err
    return yaml.safe_load(captured.out)


def command_for(config: Path) -> list[str]:
    """``flowzoo judge fit`` / ``flowzoo classifier fit`` for the judge and classifier configs (their own comments
    say so), else ``flowzoo fit``."""
    text = config.read_text()
    for preset in ("judge", "classifier"):
        if f"flowzoo {preset} fit --config" in text:
            return [preset, "fit"]
    return ["fit"]


def _class_path(node) -> str:
    return node if isinstance(node, str) else node["class_path"]


def _init_args(node) -> dict:
    return {} if isinstance(node, str) else dict(node.get("init_args") or {})


def check_resolved(resolved: dict, written: dict) -> dict:
    """Each component resolves to a registered class, the one the file names with the arguments it gives;
    path, head, objective and sampler build and are compatible. Returns the built components."""
    model = resolved["model"]
    for kind in MODEL_KINDS:
        cls = registry.get(kind, model[kind]["class_path"])  # raises unless registered
        if kind in (written.get("model") or {}):
            node = written["model"][kind]
            assert registry.get(kind, _class_path(node)) is cls, f"{kind}: {model[kind]['class_path']} is not what the file names"
            args = model[kind].get("init_args") or {}
            for key, value in _init_args(node).items():
                assert args.get(key) == value, f"{kind}.{key}: {args.get(key)!r} != {value!r}"
    data_cls = registry.get("data", resolved["data"]["class_path"])
    assert registry.get("data", _class_path(written["data"])) is data_cls
    for key, value in _init_args(written["data"]).items():
        assert resolved["data"]["init_args"][key] == value
    for key, value in (written.get("model") or {}).items():
        if key not in MODEL_KINDS:
            assert model[key] == value, f"model.{key}"
    trainer = written.get("trainer") or {}
    for key, value in trainer.items():
        if key != "callbacks":
            assert resolved["trainer"][key] == value, f"trainer.{key}"
    resolved_callbacks = [c["class_path"] for c in resolved["trainer"].get("callbacks") or []]
    for callback in trainer.get("callbacks") or []:
        assert callback["class_path"] in resolved_callbacks
    parts = {kind: registry.build(kind, {"class_path": model[kind]["class_path"], "init_args": model[kind].get("init_args") or {}})
             for kind in ("path", "head", "objective", "sampler")}
    registry.check_compatible(parts)  # what FlowLM refuses at instantiation
    return parts


def test_every_config_is_found():
    names = {c.name for c in CONFIGS}
    assert {"quickstart.yaml", "markov_flow.yaml"} <= names, names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_resolves_to_registered_compatible_components(config, capsys):
    written = yaml.safe_load(config.read_text())
    command = command_for(config)
    resolved = print_config([*command, "--config", str(config)], capsys)
    parts = check_resolved(resolved, written)
    if command[0] == "judge":  # the judge command adds the AR objective, sampler, path and a causal backbone
        assert (parts["objective"].registry_name, parts["sampler"].registry_name, parts["path"].registry_name) == ("ar", "ar", "autoregressive")
        assert resolved["model"]["backbone"]["init_args"]["causal"] is True
        assert "flowzoo.checkpoints.callback.SavePretrained" in [c["class_path"] for c in resolved["trainer"]["callbacks"]]
    if command[0] == "classifier":  # the classifier command adds the classify objective (the config's classes kept)
        assert parts["objective"].registry_name == "classify" and resolved["model"]["num_val_samples"] == 0
        assert parts["objective"].classes == resolved["data"]["init_args"]["classes"]
        assert "flowzoo.checkpoints.callback.SavePretrained" in [c["class_path"] for c in resolved["trainer"]["callbacks"]]


def _documented_fit_commands() -> list[tuple[str, list[str]]]:
    """``flowzoo fit --config ...`` lines of the README's code blocks, the Makefile and docs/own_data.md."""
    found = []
    for source in (ROOT / "README.md", ROOT / "Makefile", ROOT / "docs" / "own_data.md"):
        for line in source.read_text().replace("\\\n", " ").splitlines():  # shell continuation lines joined
            match = re.search(r"flowzoo fit (--config \S+.*)", line)
            if match:
                argv = shlex.split(match.group(1).split("#")[0])
                found.append((f"{source.name}: {' '.join(argv)}", argv))
    return found


DOCUMENTED = _documented_fit_commands()


def test_the_readme_and_makefile_have_fit_commands():
    configs = {argv[argv.index("--config") + 1] for _, argv in DOCUMENTED}
    assert {"configs/markov_flow.yaml", "configs/quickstart.yaml", "configs/own_text.yaml"} <= configs, DOCUMENTED


@pytest.mark.parametrize("argv", [a for _, a in DOCUMENTED], ids=[i for i, _ in DOCUMENTED])
def test_documented_fit_command_resolves(argv, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands use paths relative to the repository
    config = Path(argv[argv.index("--config") + 1])
    assert config.is_file(), f"the documented config {config} does not exist"
    resolved = print_config(["fit", *argv], capsys)
    written = yaml.safe_load(config.read_text())
    for arg in argv:  # the command's own overrides win over the file: --model.head=gaussian --model.sampler.steps=64
        key, sep, value = arg.partition("=")
        if sep and key.startswith("--data."):
            assert resolved["data"]["init_args"][key[len("--data."):]] == yaml.safe_load(value), key
            written["data"]["init_args"][key[len("--data."):]] = yaml.safe_load(value)
        if not (sep and key.startswith("--model.")):
            continue
        kind, _, option = key[len("--model."):].partition(".")
        if option:
            assert resolved["model"][kind]["init_args"][option] == yaml.safe_load(value), key
            written["model"][kind].setdefault("init_args", {})[option] = yaml.safe_load(value)
        else:  # a component by short name replaces the file's one (and its arguments)
            assert registry.get(kind, resolved["model"][kind]["class_path"]) is registry.get(kind, value), key
            written["model"][kind] = registry.class_path(registry.get(kind, value))
    check_resolved(resolved, written)
