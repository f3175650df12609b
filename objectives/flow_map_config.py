"""What every flow-map objective shares, one object passed whole (``lsd``, ``psd``, ``distill``, ``dmd``, ``refine``).

On the command line and in configs its fields are ``--model.objective.init_args.flow_map.<field>`` (``flow_map:`` under
the objective's ``init_args``); the flat form of earlier versions (``--model.objective.init_args.boundary=0.25``,
``init_args: {boundary: 0.25}`` in a saved spec) still works: :func:`nest_flat_args` moves those keys under ``flow_map``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlowMapConfig:
    """The batch split and time sampling of a flow-map objective, and its map loss's weight.

    ``diagonal_share`` of the batch goes to the diagonal loss (s = t: the flow-matching / anchor term), the rest to
    the map loss at pairs s <= t; ``pair_sampling`` draws the pairs (``fmlm``: gap d ~ U[0, 1], s = U (1 - d),
    t = s + d; ``uniform``: two sorted uniforms), a share ``boundary`` of them forced to (0, 1) (the one-step jump);
    ``time_sampling`` draws the diagonal's times; the loss is (n_diag diag + ``map_weight`` n_map map) / batch.
    Checked by the objective that takes it (:class:`~flowzoo.objectives._flowmap.FlowMapObjective`).
    """

    diagonal_share: float = 0.5
    pair_sampling: str = "fmlm"
    boundary: float = 1 / 32
    time_sampling: str = "uniform"
    map_weight: float = 1.0

    @classmethod
    def of(cls, value: "FlowMapConfig | dict[str, Any] | None") -> "FlowMapConfig":
        """A config from itself, a dict of its fields (a saved spec) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(FIELDS)
            if unknown:
                raise ValueError(f"unknown flow_map fields {sorted(unknown)}; fields: {', '.join(FIELDS)}")
            return cls(**value)
        if hasattr(value, "__dict__"):  # a jsonargparse Namespace
            return cls.of({k: v for k, v in vars(value).items() if not k.startswith("_")})
        raise TypeError(f"flow_map must be a FlowMapConfig or a dict of its fields, got {type(value).__name__}")


FIELDS = tuple(f.name for f in dataclasses.fields(FlowMapConfig))


def nest_flat_args(args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments with the flat fields of earlier specs (``boundary``, ``diagonal_share``, ...) moved
    under ``flow_map`` (merged over a ``flow_map`` given too)."""
    flat = {k: args[k] for k in FIELDS if k in args}
    if not flat:
        return args
    out = {k: v for k, v in args.items() if k not in flat}
    given = out.get("flow_map")
    base = dataclasses.asdict(FlowMapConfig.of(given)) if given is not None else {}
    out["flow_map"] = {**base, **flat}
    return out
