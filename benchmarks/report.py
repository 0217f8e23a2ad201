"""docs/benchmarks.md, assembled from sections each benchmark script rewrites on its own.

Each script also records its headline figures (:func:`record`) as a small JSON
file in ``benchmarks/results/`` (git-ignored); ``benchmarks/summary.py``, the
last step of ``make bench``, turns them into the summary table at the top of
the page.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
RESULTS = HERE / "results"
HEADER = """# Benchmarks

Written by `make bench`. Figures are ratios measured side by side in one run on one machine
wherever a comparison is made, so they hold across machines better than absolute times;
absolute times are given for the machine named in each section.
"""


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return f"{platform.machine()}, CPython {platform.python_version()}, {cpus} CPUs; run {stamp}"


def write_section(key: str, lines: list[str], first: bool = False) -> Path:
    """Replace the section ``key`` of docs/benchmarks.md, or add it: last, or ``first``."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = "\n".join([begin, *lines, end])
    text = DOCS.read_text() if DOCS.exists() else HEADER
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif first and "<!-- begin " in text:
        at = text.index("<!-- begin ")
        text = f"{text[:at]}{block}\n\n{text[at:]}"
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
    return DOCS


def figure(name: str, measured: str, target: str = "", met: bool | None = None) -> dict:
    """One row of the summary table; ``met`` None where there is no target to meet."""
    return {"figure": name, "measured": measured, "target": target, "met": met}


def record(key: str, figures: list[dict], **extra: object) -> Path:
    """Write benchmark ``key``'s headline figures to ``benchmarks/results/<key>.json``."""
    RESULTS.mkdir(exist_ok=True)
    ignore = RESULTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# written by make bench\n*\n!.gitignore\n")
    path = RESULTS / f"{key}.json"
    payload = {
        "key": key,
        "figures": figures,
        "seconds": process_seconds(),
        "finished": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        **extra,
    }
    path.write_text(json.dumps(payload, indent=1))
    return path


def process_seconds() -> float | None:
    """Wall seconds since this process started (Linux), imports included; None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
