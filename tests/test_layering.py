"""The layering of docs/design.md, read from the source: which package may import which.

Every ``import flowzoo...`` / ``from flowzoo... import`` is collected from the AST of each module (at module
level and inside functions; ``if TYPE_CHECKING:`` blocks excluded, they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {  # package -> folder, as pyproject.toml maps them
    "flowzoo": "zoo", "flowzoo.backbones": "zoo/backbones", "flowzoo.data": "zoo/data", "flowzoo.paths": "paths",
    "flowzoo.heads": "heads", "flowzoo.objectives": "objectives", "flowzoo.samplers": "samplers",
    "flowzoo.kernels": "kernels", "flowzoo.checkpoints": "checkpoints", "flowzoo.rewards": "rewards",
}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, module_level: bool) -> set[str]:
    """The flowzoo names ``path`` imports (``from a import b`` gives ``a.b``)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    if module_level:
        nodes, stack = [], list(tree.body)
        while stack:  # module body, including `if triton_available():` / try blocks, not function bodies
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                stack += node.body + node.orelse + getattr(node, "finalbody", [])
                for handler in getattr(node, "handlers", []):
                    stack += handler.body
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flowzoo"):
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("flowzoo")}
    return names


def resolve(name: str, known) -> str | None:
    while name not in known:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def graph(module_level: bool) -> dict[str, set[str]]:
    known = modules()
    return {m: {t for n in imports(p, module_level) if (t := resolve(n, known)) and t != m} for m, p in known.items()}


def folder_of(module: str) -> str:
    package = module if module in FOLDERS else module.rsplit(".", 1)[0]
    return FOLDERS[package]


def test_the_import_scan_sees_the_imports():
    g = graph(module_level=True)
    assert "flowzoo.paths.base" in g["flowzoo.state"]
    assert "flowzoo.kernels.cross_entropy" in g["flowzoo.kernels.shared_head"]


def test_no_package_imports_another_folders_private_module():
    found = []
    for module, targets in graph(module_level=False).items():
        for target in targets:
            if target.rsplit(".", 1)[-1].startswith("_") and not target.endswith("__init__") and folder_of(target) != folder_of(module):
                found.append(f"{module} -> {target}")
    assert not found


LOWER = ("flowzoo.paths", "flowzoo.heads", "flowzoo.backbones", "flowzoo.kernels", "flowzoo.state")
UPPER = ("flowzoo.objectives", "flowzoo.samplers", "flowzoo.module", "flowzoo.checkpoints", "flowzoo.cli")


def within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("module_level", [True, False])
def test_parts_and_the_state_never_import_the_layers_above(module_level):
    """paths, heads, backbones, kernels and flowzoo.state import no objective, sampler, model or entry point
    (not even lazily); objectives and samplers never import each other."""
    found = []
    for module, targets in graph(module_level).items():
        for target in targets:
            if within(module, LOWER) and within(target, UPPER):
                found.append(f"{module} -> {target}")
            for a, b in (("flowzoo.objectives", "flowzoo.samplers"), ("flowzoo.samplers", "flowzoo.objectives")):
                if within(module, (a,)) and within(target, (b,)):
                    found.append(f"{module} -> {target}")
    assert not found


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_at_module_level():
    assert cycles(graph(module_level=True)) == []


def test_no_import_cycle_through_the_parts_kernels_or_the_state_even_lazily():
    """Lazy imports (inside functions) included: no cycle touches paths, heads, kernels, state, objectives or samplers."""
    touched = [c for c in cycles(graph(module_level=False)) if any(within(m, LOWER + UPPER[:2]) for m in c)]
    assert touched == []
