"""Memory over a long run: RSS of the RunEngine's process and of SmartLab's worker.

Runs ``count([beam], N)`` (a 64-pixel profile and a 8 x 64 image, ``peak_stats`` live, the
raw run written by ``TiledWriter`` in the worker) and samples, from a thread
of this process every 2 s, both processes' resident memory (``/proc``) and
SmartLab's queue depth. Growth is measured from the sample after the first
10% of the events (imports, first allocations and caches are done by then)
to the end. Writes its section of docs/benchmarks.md.

    python benchmarks/memory.py [--events 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record, write_section

SAMPLE_SECONDS = 2.0
LONG_RUN = 100_000  # events: the run the target is judged over (make bench-memory)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid``, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()

    import bluesky.plans as bp
    from bluesky import RunEngine

    from smartlab_plugins import SmartLab
    from smartlab_plugins.devices import beam
    from smartlab_plugins.server import EmbeddedServer

    steer = beam.make_devices()["steer"]  # small frames: the run is about events, not bytes
    monitor = beam.BeamMonitor(steer, name="beam", pixels=64, rows=8, centre0=32, centre_row=4)
    samples: list[dict[str, float]] = []
    events = [0]

    def count_events(name: str, doc: dict) -> None:
        if name == "event":
            events[0] = doc["seq_num"]

    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(Path(folder)) as server:
        RE = RunEngine()
        with SmartLab(server.uri, server.api_key, plugins=["peak_stats"]) as smartlab:
            worker = smartlab.status()["worker_pid"]
            RE.subscribe(smartlab)
            RE.subscribe(
                lambda name, doc: events.__setitem__(0, doc["seq_num"]) if name == "event" else None
            )
            done = threading.Event()

            def sample() -> None:
                while not done.wait(SAMPLE_SECONDS):
                    status = smartlab.status()
                    samples.append(
                        {
                            "events": events[0],
                            "session_mb": rss_mb(os.getpid()),
                            "worker_mb": rss_mb(worker),
                            "pending": status["pending"],
                            "publisher_queued": status["worker"]["publisher"]["queued"],
                        }
                    )

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            RE(bp.count([monitor], args.events))
            scan_seconds = time.perf_counter() - started
            flushed = smartlab.flush(timeout=600)
            flush_seconds = time.perf_counter() - started - scan_seconds
            print(
                f"scan {scan_seconds:.1f} s, then {flush_seconds:.1f} s until all was published"
                + ("" if flushed else " (flush timed out)"),
                flush=True,
            )
            done.set()
            sampler.join()
            dropped = smartlab.dropped_total
    write_report(samples, args.events, scan_seconds, flush_seconds, dropped)


def write_report(
    samples: list[dict], events: int, seconds: float, flush_seconds: float, dropped: int
) -> None:
    settled = next(s for s in samples if s["events"] >= events // 10)
    halfway = next(s for s in samples if s["events"] >= events // 2)
    last = samples[-1]
    growth = {key: last[key] - settled[key] for key in ("session_mb", "worker_mb")}
    second_half = last["worker_mb"] - halfway["worker_mb"]
    peak_pending = max(s["pending"] for s in samples)
    peak_queued = max(s["publisher_queued"] for s in samples)
    met = max(growth.values()) < 50
    short = events < LONG_RUN  # a short run can fail the target, but not meet it
    verdict = None if short and met else met
    # KB per event over the second half: what a run longer than this one would add
    slope_kb = second_half * 1024 / max(1, last["events"] - halfway["events"])
    print(f"growth {growth}, peak pending {peak_pending}, dropped {dropped}")
    step = max(1, len(samples) // 8)
    key = "memory" if short else "memory-long"
    lines = [
        "## Memory over a long run (`benchmarks/memory.py`)"
        if short
        else f"## Memory over {events:,} events (`make bench-memory`)",
        "",
        f"`count([beam], {events})` (a 64-pixel profile and an 8 x 64 image per event,",
        "`peak_stats` live, the raw run",
        f"written by `TiledWriter` in the worker) in {seconds:.0f} s, then {flush_seconds:.0f} s",
        "until the worker had published everything; resident memory of the session's process",
        f"and of SmartLab's worker process, sampled every {SAMPLE_SECONDS:g} s.",
        "",
        "| events so far | session RSS | worker RSS | SmartLab queue | publisher queue |",
        "|---|---|---|---|---|",
        *(
            f"| {s['events']} | {s['session_mb']:.0f} MB | {s['worker_mb']:.0f} MB | "
            f"{s['pending']} | {s['publisher_queued']} |"
            for s in [*samples[::step], last]
        ),
        "",
        f"Growth from {settled['events']} events to the end: session "
        f"{growth['session_mb']:+.0f} MB, worker {growth['worker_mb']:+.0f} MB (target: under "
        f"50 MB, {'not met' if not met else 'not judged' if short else 'met'}); the worker's "
        "over the second half: "
        f"{second_half:+.0f} MB ({slope_kb:.2f} KB per event). Largest SmartLab queue: "
        f"{peak_pending} documents "
        f"(bound: `max_pending`, 10,000); largest publisher queue: {peak_queued}; documents "
        f"dropped: {dropped}.",
        *(
            [
                "",
                f"A short run: `make bench` runs {events:,} events so that it stays within 10",
                f"minutes; the target is judged over {LONG_RUN:,} events, with `make bench-memory`",
                "(about 18 minutes on a quiet 2-core machine), in the section of its own below.",
            ]
            if short
            else []
        ),
        "",
        f"Machine: {machine()}.",
    ]
    print(f"wrote {write_section(key, lines)}")
    record(
        key,
        [
            figure(
                f"Memory growth, `count([beam], {events})` after its first 10%",
                f"session {growth['session_mb']:+.0f} MB, worker {growth['worker_mb']:+.0f} MB; "
                f"{dropped} dropped",
                "under 50 MB"
                + (f" (judged over {LONG_RUN:,} events: `make bench-memory`)" if short else ""),
                verdict,
            )
        ],
    )


if __name__ == "__main__":
    main()
