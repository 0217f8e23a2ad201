"""The generated reference pages match the code they are generated from."""

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_reference_is_current():
    generator = load("hooks_reference")
    assert generator.OUT.read_text() == generator.render(), (
        "docs/reference/hooks.md is stale: run python docs/scripts/hooks_reference.py"
    )
