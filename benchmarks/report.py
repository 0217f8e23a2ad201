"""docs/benchmarks.md, assembled from sections each benchmark script rewrites on its own."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench`. Figures are ratios measured side by side in one run on one machine
wherever a comparison is made, so they hold across machines better than absolute times;
absolute times are given for the machine named in each section.
"""


def machine() -> str:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return f"{platform.machine()}, CPython {platform.python_version()}, {cpus} CPUs; run {stamp}"


def write_section(key: str, lines: list[str]) -> Path:
    """Replace the section ``key`` of docs/benchmarks.md (or append it)."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = "\n".join([begin, *lines, end])
    text = DOCS.read_text() if DOCS.exists() else HEADER
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
    return DOCS
