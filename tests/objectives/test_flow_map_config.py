"""The flow-map objectives' shared arguments are one FlowMapConfig, passed whole; older flat specs and flags still work."""

import json

import pytest

from flowzoo import registry
from flowzoo.checkpoints import from_pretrained, save_pretrained
from flowzoo.cli import nest_regrouped_flags
from flowzoo.module import FlowLM
from flowzoo.objectives.flow_map_config import FlowMapConfig

TINY = {"name": "dit", "init_args": {"width": 16, "depth": 1, "heads": 2, "cond_dim": 8}}
FLAT = {"diagonal_share": 0.75, "pair_sampling": "uniform", "boundary": 0.25, "time_sampling": "stratified", "map_weight": 2.0}


@pytest.mark.parametrize("name", ["lsd", "psd", "distill", "dmd", "refine"])
def test_every_flow_map_objective_takes_the_config_whole_and_reads_flat_specs(name):
    config = FlowMapConfig(**FLAT)
    objective = registry.get("objective", name)(flow_map=config)
    assert objective.flow_map_config is config
    assert (objective.diagonal_share, objective.pair_sampling, objective.boundary, objective.time_sampling, objective.map_weight) == tuple(FLAT.values())
    spec = registry.spec(objective)
    assert spec["init_args"]["flow_map"] == FLAT and not set(FLAT) & set(spec["init_args"])  # saved nested
    assert registry.spec(registry.build("objective", spec)) == spec  # and rebuilt from it
    assert registry.spec(registry.build("objective", {"name": name, "init_args": dict(FLAT)})) == spec  # a flat (older) spec


def test_a_checkpoint_with_the_older_flat_spec_loads(tmp_path):
    model = FlowLM(backbone=TINY, vocab_size=7, objective={"name": "psd", "init_args": {"flow_map": {"boundary": 0.25}}})
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    flow_map = config["objective"]["init_args"].pop("flow_map")
    config["objective"]["init_args"].update(flow_map)  # as an earlier flowzoo wrote it
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    again = from_pretrained(tmp_path / "m")
    assert again.objective.boundary == 0.25 and registry.spec(again.objective) == registry.spec(model.objective)


def test_bad_config_values_and_fields_are_refused():
    with pytest.raises(ValueError, match="boundary"):
        registry.build("objective", {"name": "psd", "init_args": {"flow_map": {"boundary": 2.0}}})
    with pytest.raises(ValueError, match="pair_sampling"):
        registry.build("objective", {"name": "lsd", "init_args": {"pair_sampling": "edges"}})
    with pytest.raises(ValueError, match="unknown flow_map fields"):
        registry.build("objective", {"name": "lsd", "init_args": {"flow_map": {"boundry": 0.5}}})


def test_flat_command_line_flags_are_nested_for_flow_map_objectives_only():
    flat = ["fit", "--model.objective=distill", "--model.objective.init_args.boundary=0.25", "--model.objective.diagonal_share=0.75",
            "--model.objective.init_args.teacher=t.ckpt", "--model.objective.init_args.flow_map.map_weight=2"]
    assert nest_regrouped_flags(flat) == [
        "fit", "--model.objective=distill", "--model.objective.init_args.flow_map.boundary=0.25",
        "--model.objective.init_args.flow_map.diagonal_share=0.75", "--model.objective.init_args.teacher=t.ckpt",
        "--model.objective.init_args.flow_map.map_weight=2",
    ]
    own = ["fit", "--model.objective=flow_matching", "--model.objective.init_args.time_sampling=stratified"]
    assert nest_regrouped_flags(own) == own  # flow_matching's own time_sampling
