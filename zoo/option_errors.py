"""One line for a command-line option jsonargparse refused, instead of its usage page and multi-line report.

``--model.sampler.stepz=4`` becomes ``--model.sampler.stepz: sampler 'euler' has no option 'stepz'; did you mean
steps? (its options: steps, decode, temperature, fused)``; ``--model.lrr=3`` becomes ``--model.lrr: no such option;
did you mean --model.lr?``.
"""

from __future__ import annotations

import difflib
import inspect
import re

from flowzoo import registry
from flowzoo.errors import FlowzooError

TOP_LEVEL = ("config", "print_config", "seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path")


class OptionError(FlowzooError, ValueError):
    """A command-line option that does not exist or whose value does not parse."""


def _parameters(cls) -> list[str]:
    try:
        return [n for n, p in inspect.signature(cls).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return []


def _nearest(name: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(name, choices, n=3, cutoff=0.75)


def _options_of(group: str) -> list[str]:
    """The option names under ``--<group>.`` for the groups whose class is fixed (model, trainer)."""
    if group == "model":
        from flowzoo.module import FlowLM

        return _parameters(FlowLM)
    if group == "trainer":
        from lightning.pytorch import Trainer

        return _parameters(Trainer)
    return []


def unrecognized(option: str, command: str) -> str:
    """``--model.lrr``: the nearest names among the options of its group."""
    key = option.split("=", 1)[0]
    group, _, name = key.lstrip("-").rpartition(".")
    prefix = f"--{group}." if group else "--"
    near = [prefix + o for o in _nearest(name, _options_of(group) if group else list(TOP_LEVEL))]
    hint = f"did you mean {' or '.join(near)}?" if near else f"see flowzoo {command} --help"
    return f"{key}: no such option; {hint}"


def one_line(message: str, command: str = "fit") -> str:
    """The line that matters of a jsonargparse error ``message``."""
    found = re.match(r"unrecognized arguments: (\S+)", message)
    if found:
        return unrecognized(found.group(1), command)
    key = re.match(r'Parser key "([^"]+)"', message)
    if not key:
        return (message.strip().splitlines() or ["invalid arguments"])[0]
    key = key.group(1)
    refused = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", message)
    if refused:
        class_path, detail = refused.groups()
        option = re.match(r"Option '([^']+)' is not accepted", detail.strip())
        kind = key.rsplit(".", 1)[-1]
        if option and kind in registry.KINDS:
            try:
                cls = registry.get(kind, class_path)
            except FlowzooError:
                cls = None
            if cls is not None:
                name, options = option.group(1), _parameters(cls)
                near = _nearest(name, options)
                hint = f"; did you mean {' or '.join(near)}?" if near else ""
                return (f"--{key}.{name}: {kind} {cls.registry_name!r} has no option {name!r}{hint} "
                        f"(its options: {', '.join(options) or 'none'})")
        inner = re.match(r'Parser key "([^"]+)":\s*(.*)', detail.strip())
        if inner:  # a value of the component's own argument: --model.sampler.steps=abc
            nested = inner.group(2).strip() or _next_line(message, refused.end())
            return f"--{key}.{inner.group(1)}: {_readable(nested)}"
        return f"--{key}: {_readable(detail.strip())}"
    first = message.strip().splitlines()[0][len(f'Parser key "{key}":'):].strip()  # --config: File does not exist: 'x'
    lines = [first] if first else [line.strip() for line in message.strip().splitlines()[1:] if line.strip()]
    return f"--{key}: {_readable(lines[0]) if lines else 'invalid value'}"


def _next_line(message: str, start: int) -> str:
    rest = [line.strip() for line in message[start:].splitlines() if line.strip()]
    return rest[0] if rest else "invalid value"


def _readable(detail: str) -> str:
    """jsonargparse's ``Expected a <class 'int'>. Got value: abc`` as ``expected int, got 'abc'``."""
    found = re.match(r"Expected a <class '([\w.]+)'>\. Got value: (.*)", detail)
    return f"expected {found.group(1)}, got {found.group(2)!r}" if found else detail
