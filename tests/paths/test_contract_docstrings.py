"""The examples in the path contract's docstrings (flow_map, map_weights, semigroup_weight, flow_map_refusal) run."""

import doctest

import flowzoo.paths.base


def test_path_contract_docstring_examples_hold():
    result = doctest.testmod(flowzoo.paths.base, raise_on_error=False)
    assert result.attempted >= 6  # one example or more per flow-map member
    assert result.failed == 0
