"""The import graph of SmartLab's own modules, read from the source (nothing is imported).

Only imports made when a module loads count: those inside functions (loaded
on first use) and under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Source folders and the package each installs as (pyproject.toml's package-dir).
SOURCES = {
    "smartlab_plugins": "smartlab_plugins",
    "callbacks": "smartlab_plugins.callbacks",
    "devices": "smartlab_plugins.devices",
    "profiles": "smartlab_plugins.profiles",
}
PREFIX = "smartlab_plugins"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _load_time_nodes(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module loads: module level, into if/try blocks, not into
    ``if TYPE_CHECKING:``, functions or classes' methods."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                yield from _load_time_nodes(node.orelse)
                continue
            yield from _load_time_nodes(node.body)
            yield from _load_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _load_time_nodes(block)
            for handler in node.handlers:
                yield from _load_time_nodes(handler.body)
        elif isinstance(node, ast.ClassDef):
            yield from _load_time_nodes(node.body)
        else:
            yield node


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports when it loads."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _load_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:  # a submodule by name, or a name of the module
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports at load time."""
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def unit(module: str) -> str:
    """What a cycle is counted between: a sub-package as a whole, or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def unit_graph() -> dict[str, set[str]]:
    """Sub-package (or top-level module) → those it imports at load time."""
    units: dict[str, set[str]] = {}
    for module, targets in graph().items():
        edges = units.setdefault(unit(module), set())
        edges.update(unit(t) for t in targets if unit(t) != unit(module))
    return units


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
