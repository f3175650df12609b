import pytest

from flowzoo import registry
from flowzoo.errors import IncompatibleComponentsError, UnknownComponentError
from flowzoo.module import FlowLM


def test_every_kind_has_builtin_components():
    for kind in registry.KINDS:
        assert registry.names(kind), kind
    assert "linear" in registry.names("path")
    assert {"categorical", "gaussian"} <= set(registry.names("head"))


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownComponentError) as err:
        registry.get("path", "no-such-path")
    message = str(err.value)
    assert "no-such-path" in message
    for name in registry.names("path"):
        assert name in message


def test_unknown_kind_is_refused():
    with pytest.raises(UnknownComponentError, match="kinds are"):
        registry.names("widget")


def test_build_by_name_dict_and_class_name():
    path = registry.build("path", {"name": "linear", "init_args": {"sigma": 2.0}})
    assert path.sigma == 2.0
    assert registry.build("path", "LinearPath").registry_name == "linear"
    assert registry.build("path", "flowzoo.paths.LinearPath").registry_name == "linear"


def test_bad_init_args_name_the_component():
    with pytest.raises(TypeError, match="path 'linear'"):
        registry.build("path", {"name": "linear", "init_args": {"bogus": 1}})


def test_spec_round_trips_through_build():
    sampler = registry.build("sampler", {"name": "euler", "init_args": {"steps": 7, "decode": "sample"}})
    spec = registry.spec(sampler)
    steering = {"reward": None, "guidance": None, "guidance_schedule": "constant", "normalize": False, "particles": 1, "tilt": 1.0}
    assert spec == {"name": "euler", "init_args": {"steps": 7, "decode": "sample", "temperature": 1.0, "fused": None, **steering, "grid": "linspace", "gamma": 0.0, "churn_rate": 0.0, "self_condition": True}}
    assert registry.build("sampler", spec).steps == 7


def test_incompatible_combination_names_both_components():
    class DiscreteOnly(registry.Component):
        state = "discrete"

        def incompatibility(self, parts):
            return ("objective", "needs a discrete objective")

    fake = DiscreteOnly()
    fake.registry_name = "fake"
    with pytest.raises(IncompatibleComponentsError, match="path 'fake' cannot be used with objective 'flow_matching'"):
        registry.check_compatible({"path": fake, "objective": registry.build("objective", "flow_matching")})


def test_describe_lists_every_kind_with_docs():
    text = registry.describe()
    for kind in registry.KINDS:
        assert f"{kind}:" in text
    assert "Linear interpolant" in text


def test_flowlm_refuses_missing_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        FlowLM()
