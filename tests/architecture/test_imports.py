"""The shape of the code: which modules import which, read from the source.

The directions ``STYLE.md`` keeps, and the data path's: no import cycle
between sub-packages; the RunEngine's process loads none of the worker's
modules; devices know nothing of analysis; the hook specifications import
nothing of ours; plugins know hooks and models, not documents, queues or Tiled.
"""

from __future__ import annotations

import subprocess
import sys

import imports
import pytest
import tomllib

GRAPH = imports.unit_graph()


def reaches(start: str) -> set[str]:
    """Every unit ``start`` imports, directly or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_cycle_between_sub_packages_or_modules() -> None:
    assert imports.cycles(GRAPH) == []
    assert imports.cycles(imports.graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("unit", "allowed"),
    [
        ("smartlab_plugins.devices", set()),
        ("smartlab_plugins.hookspecs", set()),
        ("smartlab_plugins.protocol", set()),
        (
            "smartlab_plugins.plugins",
            {
                "smartlab_plugins.hookspecs",
                "smartlab_plugins.models",
                "smartlab_plugins.devices",
                "smartlab_plugins.settings",
            },
        ),
    ],
)
def test_directions_kept(unit: str, allowed: set[str]) -> None:
    assert reaches(unit) <= allowed, sorted(reaches(unit) - allowed)


def test_the_runengine_side_loads_none_of_the_worker() -> None:
    """``SmartLab`` in the RunEngine's process: no assembly, worker, publishing, Tiled
    writer, pandas or torch (the worker process loads those)."""
    code = (
        "import sys, json; import smartlab_plugins.callbacks.smartlab; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(__import__("json").loads(out.stdout))
    worker_side = {
        "smartlab_plugins.assembly",
        "smartlab_plugins.worker",
        "smartlab_plugins.publish",
        "smartlab_plugins.compute",
        "bluesky_tiled_plugins",
        "jsonschema",
        "pandas",
        "torch",
    }
    assert not loaded & worker_side, sorted(loaded & worker_side)
    assert "smartlab_plugins.runner" in loaded  # the check sees what it loads


def test_every_package_folder_is_installed() -> None:
    """A sub-package missing from pyproject's list works in an editable install and is
    missing from a wheel (``smartlab_plugins.publish`` was)."""
    config = tomllib.loads((imports.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    packages = {
        name
        for name, path in imports.modules().items()
        if path.name == "__init__.py" and name.startswith(imports.PREFIX)
    }
    assert packages - listed == set()
