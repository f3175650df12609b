"""One registry of components by kind: path, head, objective, sampler, backbone, data, reward.

A component is registered with ``@register("path", "linear")`` on its class. Components
record their constructor arguments so a model can be written to ``config.json`` and
rebuilt by name (``spec``/``build``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any, Callable, ClassVar

from flowzoo.errors import IncompatibleComponentsError, UnknownComponentError

KINDS = ("backbone", "path", "head", "objective", "sampler", "data", "reward")
# The subpackages whose modules register components; importing them fills the registry.
_PROVIDERS = (
    "flowzoo.backbones",
    "flowzoo.paths",
    "flowzoo.heads",
    "flowzoo.objectives",
    "flowzoo.samplers",
    "flowzoo.data",
    "flowzoo.rewards",
)
_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_loaded = False


class Component:
    """Mixin for registered components: remembers the arguments it was built with.

    ``registry_kind``/``registry_name`` are set by :func:`register`; ``init_args`` holds the
    outermost constructor's arguments (with defaults applied) so :func:`spec` can write them.
    """

    registry_kind: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_args", False):
            return

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            if "_flowzoo_init_args" not in self.__dict__:
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop("self", None)
                for name, param in inspect.signature(init).parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(recorded.pop(name, {}))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                        recorded.pop(name, None)
                object.__setattr__(self, "_flowzoo_init_args", recorded)
            init(self, *args, **kw)

        recording_init._records_args = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[misc]

    @property
    def init_args(self) -> dict[str, Any]:
        return dict(self.__dict__.get("_flowzoo_init_args", {}))

    def incompatibility(self, parts: dict[str, "Component"]) -> tuple[str, str] | None:
        """Return ``(other_kind, reason)`` if this component cannot work with ``parts[other_kind]``."""
        return None


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` available as ``name`` among components of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")

    def decorate(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.registry_kind = kind
        cls.registry_name = name
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def load_all() -> None:
    """Import every provider package so that all built-in components are registered."""
    global _loaded
    if _loaded:
        return
    for module in _PROVIDERS:
        importlib.import_module(module)
    _loaded = True


def names(kind: str) -> list[str]:
    load_all()
    _check_kind(kind)
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` for ``kind``; unknown names list the valid ones."""
    load_all()
    _check_kind(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        for cls in _REGISTRY[kind].values():  # a full class path or class name is fine too
            if name in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}", class_path(cls)):
                return cls
        raise UnknownComponentError(
            f"unknown {kind} {name!r}; valid {kind} names: {', '.join(sorted(_REGISTRY[kind]))}"
        ) from None


def build(kind: str, spec_or_name: "str | dict[str, Any] | Component", **overrides: Any) -> Any:
    """Instantiate a component from a name, a ``{"name"|"class_path", "init_args"}`` dict, or pass one through."""
    if isinstance(spec_or_name, Component):
        return spec_or_name
    if isinstance(spec_or_name, str):
        name, args = spec_or_name, {}
    elif isinstance(spec_or_name, dict):
        name = spec_or_name.get("name") or spec_or_name.get("class_path")
        if name is None:
            raise UnknownComponentError(f"a {kind} spec needs a 'name' or 'class_path': got {spec_or_name!r}")
        args = dict(spec_or_name.get("init_args") or {})
    else:
        raise TypeError(f"cannot build a {kind} from {type(spec_or_name).__name__}")
    cls = get(kind, name)
    args.update(overrides)
    upgrade = getattr(cls, "upgrade_args", None)  # a component whose arguments were regrouped reads older specs
    if upgrade is not None:
        args = upgrade(args)
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as err:
        raise TypeError(f"{kind} {cls.registry_name!r}: {err}") from None
    return cls(**args)


def spec(component: Component) -> dict[str, Any]:
    """The JSON-able description ``{"name", "init_args"}`` that :func:`build` turns back into ``component``."""
    return {"name": component.registry_name, "init_args": _jsonable(component.init_args)}


def class_path(cls: type) -> str:
    """The import path jsonargparse uses: the shortest public module that exports ``cls``."""
    module = cls.__module__
    parent = module.rsplit(".", 1)[0]
    try:
        if getattr(importlib.import_module(parent), cls.__name__, None) is cls:
            return f"{parent}.{cls.__name__}"
    except ImportError:
        pass
    return f"{module}.{cls.__name__}"


def check_compatible(parts: dict[str, Component]) -> None:
    """Refuse a combination of components that cannot work together, naming both and why."""
    for kind, part in parts.items():
        found = part.incompatibility(parts) if isinstance(part, Component) else None
        if found is not None:
            other_kind, reason = found
            other = parts[other_kind]
            raise IncompatibleComponentsError(
                f"{kind} {part.registry_name!r} cannot be used with {other_kind} "
                f"{getattr(other, 'registry_name', type(other).__name__)!r}: {reason}"
            )


def not_numbers(signature_of: Callable, args: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` of each argument whose parameter defaults to a number but whose value is not one ("48", [2]):
    refused by the callers in one line instead of reaching the constructor as a comparison error."""
    try:
        params = inspect.signature(signature_of).parameters
    except (TypeError, ValueError):
        return []
    return [(key, value) for key, value in args.items()
            if key in params and _is_number(params[key].default) and value is not None and not _is_number(value)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe() -> str:
    """Every kind with its names and one-line docs (what ``flowzoo list`` prints)."""
    load_all()
    lines = []
    for kind in KINDS:
        lines.append(f"{kind}:")
        for name in sorted(_REGISTRY[kind]):
            doc = (inspect.getdoc(_REGISTRY[kind][name]) or "").strip().splitlines()
            lines.append(f"  {name:<16} {doc[0] if doc else ''}")
    return "\n".join(lines)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownComponentError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Component):
        return spec(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a config object passed whole: its fields
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
