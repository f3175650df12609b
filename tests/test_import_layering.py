"""The import graph of flowzoo's own modules: no cycles, and no module imports another folder's private ``_module``.

The graph is read from the source with ``ast`` (every ``import flowzoo...`` / ``from flowzoo... import ...``, at
module level or inside a function: a deferred import is still a dependency), and its strongly connected
components (Tarjan) are the cycles. A module's import of its own parent package (``import flowzoo`` for
``__version__``) is not an edge: Python has imported the parent before the module. Package ``__init__`` facades
that re-export something built above them (``flowzoo.FlowLM``, ``flowzoo.checkpoints.load_checkpoint``) import it
on first use, so their lower modules can be imported without it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """flowzoo's subpackages and their folders, from pyproject.toml's package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every flowzoo module name -> its file (packages as their ``__init__``)."""
    found = {}
    for package, folder in package_dirs().items():
        for file in folder.glob("*.py"):
            found[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return found


def imported_names(name: str, file: Path, known: set[str]) -> set[str]:
    """The dotted flowzoo names ``name`` imports, as written (``from pkg import x`` gives pkg.x when pkg.x is a
    module, else pkg); ``if TYPE_CHECKING:`` imports, for annotations, are left out."""
    package = name if file.stem == "__init__" else name.rsplit(".", 1)[0]
    tree = ast.parse(file.read_text(), str(file))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t == "flowzoo" or t.startswith("flowzoo."))
    return out


def imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The flowzoo modules ``name`` imports (a name below a module, ``flowzoo.a.b.Class``, is that module)."""
    out = set()
    for target in imported_names(name, file, known):
        while target and target not in known:  # flowzoo.a.b.Class -> flowzoo.a.b
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            out.add(target)  # a module's own parent packages are imported before it anyway: not an edge
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, file, known) for name, file in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def folder_of(module: str) -> str:
    """The subpackage a module belongs to (a package is its own)."""
    dirs = package_dirs()
    return module if module in dirs else module.rpartition(".")[0]


def private_module(target: str) -> str | None:
    """The private module a dotted name goes through (``flowzoo.objectives._flowmap.x`` -> ``flowzoo.objectives._flowmap``)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[: i + 1])
    return None


def private_imports(names: dict[str, set[str]]) -> list[str]:
    """Imports (dotted names as written, existing or not) of a ``_private`` module from another folder."""
    found = []
    for source, targets in names.items():
        for target in targets:
            private = private_module(target)
            if private is not None and folder_of(private) != folder_of(source):
                found.append(f"{source} -> {private}")
    return sorted(set(found))


def written_imports() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_names(name, file, known) for name, file in found.items()}


def test_the_graph_sees_flowzoos_modules():
    edges = graph()
    assert "flowzoo.cli" in edges and "flowzoo.objectives.distill" in edges
    assert "flowzoo.registry" in edges["flowzoo.module"]  # a plain import is an edge
    assert "flowzoo.module" not in edges["flowzoo.objectives.base"]  # an ``if TYPE_CHECKING:`` one is not
    assert {"a", "b"} in [set(c) for c in cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})]  # the checker finds a cycle
    assert private_imports({"flowzoo.samplers.euler": {"flowzoo.objectives._flowmap.map_weights"}}) == ["flowzoo.samplers.euler -> flowzoo.objectives._flowmap"]
    assert private_imports({"flowzoo.objectives.psd": {"flowzoo.objectives._flowmap"}}) == []  # its own folder's


def test_every_imported_flowzoo_module_exists():
    """A renamed module leaves no import of its old name behind (e.g. flowzoo._discover -> flowzoo.discover)."""
    found = modules()
    known = set(found)
    missing = sorted(
        f"{name} -> {target}"
        for name, targets in written_imports().items()
        for target in targets
        if target not in known  # a from-import names its module, an import the module itself
    )
    assert not missing, "imports of flowzoo modules that do not exist: " + "; ".join(missing)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles among flowzoo modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_in_the_kernels():
    """kernels/cross_entropy <-> shared_head <-> lsd and noise <-> interpolant were cycles before the kernels' renames."""
    found = [c for c in cycles(graph()) if any(m.startswith("flowzoo.kernels") for m in c)]
    assert not found, "import cycles among flowzoo.kernels modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_of_another_folders_private_module():
    found = private_imports(written_imports())
    assert not found, "imports of another folder's private module: " + "; ".join(found)


LOWER = ("flowzoo.paths", "flowzoo.heads", "flowzoo.backbones", "flowzoo.kernels", "flowzoo.state")
UPPER = ("flowzoo.objectives", "flowzoo.samplers", "flowzoo.module", "flowzoo.checkpoints", "flowzoo.teachers", "flowzoo.cli")


def within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports against docs/design.md's picture: the parts, kernels or state importing objectives, samplers or
    anything above them (deferred imports too), and objectives and samplers importing each other."""
    found = []
    for source, targets in edges.items():
        for target in targets:
            if within(source, LOWER) and within(target, UPPER):
                found.append(f"{source} -> {target}")
            if (within(source, ("flowzoo.objectives",)) and within(target, ("flowzoo.samplers",))) or (
                within(source, ("flowzoo.samplers",)) and within(target, ("flowzoo.objectives",))
            ):
                found.append(f"{source} -> {target}")
    return sorted(found)


def test_the_layering_check_sees_an_upward_import():
    assert upward_imports({"flowzoo.samplers.ar": {"flowzoo.objectives.ar"}}) == ["flowzoo.samplers.ar -> flowzoo.objectives.ar"]
    assert upward_imports({"flowzoo.state": {"flowzoo.module"}}) == ["flowzoo.state -> flowzoo.module"]
    assert upward_imports({"flowzoo.samplers.euler": {"flowzoo.state", "flowzoo.paths.base"}}) == []


def test_no_upward_import():
    found = upward_imports(graph())
    assert not found, "imports against the layering of docs/design.md: " + "; ".join(found)
