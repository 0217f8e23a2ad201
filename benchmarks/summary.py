"""The summary table of ``make bench``: every script's headline figures against their targets.

Reads the JSON each benchmark script wrote to ``benchmarks/results/`` (see
``report.record``), prints one table (figure, measured, target, met?) and
writes it as the first section of docs/benchmarks.md. ``make bench`` writes
``benchmarks/results/started`` (seconds since the epoch) before its first
script, so the table also gives the wall time of the whole run: from then to
the last results file written (rerunning this script later changes nothing).

    python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RESULTS, machine, write_section

#: The scripts of ``make bench``, in its order: (results key, script).
SCRIPTS = (
    ("re-overhead", "re_overhead.py"),
    ("generators", "generators.py"),
    ("throughput", "throughput.py"),
    ("latency", "latency.py"),
    ("scaling", "scaling.py"),
    ("memory", "memory.py"),
    ("file-backed", "file_backed.py"),
    ("raw-staleness", "raw_staleness.py"),
)
BENCH_LIMIT_MINUTES = 10
#: Runs too long for ``make bench``, with targets of their own: shown when their results exist,
#: never counted in its wall time: (results key, make target, section of the page).
LONG_RUNS = (("memory-long", "make bench-memory", "Memory over 100,000 events"),)


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def main() -> None:
    results, written = {}, []
    for key, _ in SCRIPTS:
        path = RESULTS / f"{key}.json"
        if path.exists():
            results[key] = json.loads(path.read_text())
            written.append(path.stat().st_mtime)
    rows: list[tuple[str, str, str, str]] = []
    for key, script in SCRIPTS:
        if key not in results:
            rows.append((f"`{script}`", "not run (no results)", "", "-"))
            continue
        for f in results[key]["figures"]:
            rows.append((f["figure"], f["measured"], f["target"] or "-", verdict(f["met"])))
    for key, target, section in LONG_RUNS:
        path = RESULTS / f"{key}.json"
        if path.exists():
            for f in json.loads(path.read_text())["figures"]:
                figure = f"{f['figure']} (`{target}`)"
                rows.append((figure, f["measured"], f["target"] or "-", verdict(f["met"])))
        else:
            rows.append((f"`{target}`", f"not run here: see '{section}'", "", "-"))
    started = RESULTS / "started"
    total = None  # only for a whole run of make bench: every script's results written after it
    if started.exists() and len(written) == len(SCRIPTS):
        begun = float(started.read_text())
        total = max(written) - begun if min(written) > begun else None
    if total is not None:
        rows.append(
            (
                "`make bench`, wall time of the whole run",
                f"{total / 60:.1f} min",
                f"under {BENCH_LIMIT_MINUTES} min on CPU",
                verdict(total < 60 * BENCH_LIMIT_MINUTES),
            )
        )
    print_table(rows)
    write_report(rows, results, total)


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("figure", "measured", "target", "met?")
    plain = [tuple(cell.replace("**", "").replace("`", "") for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in [header, *plain]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print("\nSummary of make bench")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in plain:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def detected_device() -> str:
    """The device the models run on here, as the inference runtime picks it."""
    from smartlab_plugins.models import runtime

    return runtime.pick_device().type


def write_report(rows: list[tuple[str, str, str, str]], results: dict, total: float | None) -> None:
    seconds = [
        f"`{script}` {results[key]['seconds']:.0f} s"
        for key, script in SCRIPTS
        if key in results and results[key].get("seconds") is not None
    ]
    device = results.get("throughput", {}).get("device") or detected_device()
    missed = [row[0] for row in rows if row[3] == "**no**"]
    lines = [
        "## Summary",
        "",
        "Headline figures of this run of `make bench` against the targets of the performance",
        "issue; each comes from the section of this page named in it, where the method, the",
        "full tables and, for every target not met, the reason are given.",
        "",
        "| figure | measured | target | met? |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        (
            f"Not met: {len(missed)} of {sum(row[3] != '-' for row in rows)} targets "
            "(see their sections for why)."
            if missed
            else "Every target with a figure here is met."
        ),
        "",
        (
            "GPU figures are not measured: no GPU was available on the machine of this run, so"
            " the model plugins' throughput and latency are CPU figures only (the throughput"
            " benchmark runs on CUDA by itself where there is one)."
            if device == "cpu"
            else f"Model plugins ran on {device}."
        ),
        "",
        "Time per script (imports included): " + ", ".join(seconds) + "." if seconds else "",
        *(
            [
                "",
                f"The {BENCH_LIMIT_MINUTES}-minute limit is not met in this run. Most of the time",
                "goes to waiting for SmartLab's worker to finish publishing what a scan produced:",
                "after each SmartLab repeat of the image scan in `re_overhead.py`, in",
                "`latency.py` (the reader waits for the last result), in `scaling.py` and in",
                "`memory.py`; each of those sections gives its times to all published.",
            ]
            if total is not None and total >= 60 * BENCH_LIMIT_MINUTES
            else []
        ),
        "",
        f"Machine: {machine()}.",
    ]
    print(f"wrote {write_section('summary', lines, first=True)}")


if __name__ == "__main__":
    main()
