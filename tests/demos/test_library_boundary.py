"""The demos stand beside the library: only the ``smartlab demo`` command imports them,
and only when it runs, so that importing SmartLab never loads a demo."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The folders that install as ``smartlab_plugins`` (see ``package-dir`` in pyproject.toml).
LIBRARY = ("smartlab_plugins", "callbacks", "devices", "profiles")


def demo_imports(path: Path) -> set[str]:
    """Where ``path`` imports ``smartlab_demos``: the top-level function, or ``<module>``."""
    found = set()
    for statement in ast.parse(path.read_text(), filename=str(path)).body:
        scope = statement.name if isinstance(statement, ast.FunctionDef) else "<module>"
        for node in ast.walk(statement):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] == "smartlab_demos" for name in names):
                found.add(scope)
    return found


def test_only_the_demo_commands_import_the_demos_and_only_when_they_run():
    importers = {
        (path.relative_to(ROOT).as_posix(), scope)
        for folder in LIBRARY
        for path in sorted((ROOT / folder).rglob("*.py"))
        for scope in demo_imports(path)
    }
    assert importers == {
        ("smartlab_plugins/cli.py", "_demo"),
        ("smartlab_plugins/cli.py", "_demo_adaptive"),
    }
