"""Latency from an event leaving the RunEngine to its result being readable by another client.

A reader in a separate process (plain ``tiled.client`` and
:class:`smartlab_plugins.results.EventFollower`, polling every 10 ms) notes
when each result row first becomes readable; a subscription on the RunEngine
notes when each event was emitted (O(1) per event). Both clocks are this
machine's. Two cases: ``peak_stats`` on the beam monitor's profiles, and ``phase_cnn``
on 97 x 243 diffraction frames, each at a steady event rate. Writes its
section of docs/benchmarks.md.

    python benchmarks/latency.py [--events 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record, write_section

POLL_SECONDS = 0.01
#: Events of an unmeasured run first, so the figures are of a worker that has loaded its model.
WARM_UP_EVENTS = 5


def read_live(uri: str, key: str, uid_file: Path, plugin: str, events: int, out: Path) -> None:
    """The reader process: first-seen time of each seq_num, until all are seen or 120 s pass."""
    from tiled.client import from_uri

    from smartlab_plugins.results import EventFollower, find_analyses

    client = from_uri(uri, api_key=key)
    uid_file.with_suffix(".ready").touch()
    deadline = time.time() + 600
    while not (uid_file.exists() and uid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.005)
    uid = uid_file.read_text().strip()
    seen: dict[int, float] = {}
    errors: list[str] = []

    follower = None
    deadline = time.time() + 120
    while len(seen) < events and time.time() < deadline:
        try:
            if follower is None:
                found = find_analyses(client, run_uid=uid, plugin=plugin)
                follower = EventFollower(found[0]) if found else None
            if follower is not None:
                rows = follower.poll()
                now = time.time()
                for seq_num in rows.get("seq_num", []):
                    seen.setdefault(int(seq_num), now)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(POLL_SECONDS)
    out.write_text(json.dumps({"seen": seen, "errors": errors}))


class Arrivals:
    """A live view (``SmartLab.add_live_view``) that notes when each result reaches it."""

    wants_arrays = wants_inputs = False

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.seen: dict[int, float] = {}

    def __call__(self, message: dict) -> None:
        now = time.time()
        for seq_num in message["seq_num"]:
            self.seen.setdefault(int(seq_num), now)


def percentiles(latency_s: np.ndarray, prefix: str = "") -> dict[str, float]:
    """p50/p95/p99/max of latencies given in seconds, in milliseconds."""
    ms = latency_s * 1000
    return {
        **{f"{prefix}p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)},
        f"{prefix}max": float(ms.max()),
    }


def measure(server, plugin: str, plan_for, events: int, folder: Path) -> dict:
    """Run ``plan_for(events)`` with SmartLab (``plugin`` only) and a reader process watching."""
    from bluesky import RunEngine

    from smartlab_plugins import SmartLab

    uid_file, out = folder / f"{plugin}.uid", folder / f"{plugin}.json"
    arguments = [server.uri, server.api_key, str(uid_file), plugin, str(events), str(out)]
    reader = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--reader", *arguments]
    )
    while not uid_file.with_suffix(".ready").exists() and reader.poll() is None:
        time.sleep(0.02)
    emitted: dict[int, float] = {}

    def note(name: str, doc: dict) -> None:
        if name == "start":
            uid_file.write_text(doc["uid"])
        elif name == "event":
            emitted[doc["seq_num"]] = time.time()

    RE = RunEngine()
    arrivals = Arrivals(plugin)
    with SmartLab(server.uri, server.api_key, plugins=[plugin]) as smartlab:
        RE.subscribe(smartlab)
        RE(plan_for(WARM_UP_EVENTS))  # the worker's first run imports and loads the model
        smartlab.flush()
        smartlab.add_live_view(arrivals)
        RE.subscribe(note)
        started = time.perf_counter()
        RE(plan_for(events))
        scan_seconds = time.perf_counter() - started
        reader.wait(timeout=180)
        dropped = smartlab.dropped_total
    report = json.loads(out.read_text())
    seen = {int(k): v for k, v in report["seen"].items()}
    if not seen:
        raise RuntimeError(
            f"{plugin}: the reader saw no results; its errors: {report['errors'][:3]}"
        )
    latency = np.array([seen[s] - emitted[s] for s in emitted if s in seen])
    live = np.array([arrivals.seen[s] - emitted[s] for s in emitted if s in arrivals.seen])
    return {
        "plugin": plugin,
        "events": len(emitted),
        "rate": len(emitted) / scan_seconds,
        "seen": len(latency),
        "live_seen": len(live),
        "errors": len(report["errors"]),
        "dropped": dropped,
        **percentiles(latency),
        **percentiles(live, prefix="live_"),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        uri, key, uid_file, plugin, events, out = sys.argv[2:8]
        read_live(uri, key, Path(uid_file), plugin, int(events), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()

    import bluesky.plans as bp

    from smartlab_plugins.devices import beam, mpb
    from smartlab_plugins.server import EmbeddedServer

    monitor = beam.make_devices(seed=3)["beam"]
    diffraction = mpb.make_devices(seed=3)
    cases = [
        ("peak_stats", "beam profiles (1-D and 2-D), 100 events/s",
         lambda n: bp.count([monitor], n, delay=0.01)),
        ("phase_cnn", "97 x 243 `mpb_image` frames, 50 frames/s",
         lambda n: bp.count([diffraction["mpb"]], n, delay=0.02)),
    ]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(Path(folder) / "tiled") as server:
        for plugin, what, plan_for in cases:
            row = measure(server, plugin, plan_for, args.events, Path(folder))
            rows.append((what, row))
            print(
                f"{plugin}: {row['seen']}/{row['events']} events seen at {row['rate']:.0f}/s; "
                f"p50 {row['p50']:.0f} ms, p95 {row['p95']:.0f} ms, p99 {row['p99']:.0f} ms; "
                f"live view p50 {row['live_p50']:.0f} ms, p99 {row['live_p99']:.0f} ms",
                flush=True,
            )
    write_report(rows, args.events)


def write_report(rows: list[tuple[str, dict]], events: int) -> None:
    cnn = next(row for _, row in rows if row["plugin"] == "phase_cnn")
    met = cnn["p50"] <= 50 and cnn["p99"] <= 250
    lines = [
        "## Latency to a reader in another process (`benchmarks/latency.py`)",
        "",
        f"{events} events per case. Latency: from the RunEngine emitting an event to its result",
        "row being readable by a separate process polling Tiled every 10 ms with plain",
        "`tiled.client` (`EventFollower`: each immutable part read once). Includes the feeder's",
        "20 ms linger, the worker process, the HTTP write and the reader's poll interval.",
        f"Each case first runs {WARM_UP_EVENTS} unmeasured events: a worker's first run of a",
        "model plugin imports and loads it (about 4 s here), which would otherwise start the",
        "measured scan with a backlog.",
        "",
        "| plugin | data and rate | seen | p50 | p95 | p99 | max | reader errors | dropped |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['plugin']} | {what} (measured {r['rate']:.0f}/s) | {r['seen']}/{r['events']} | "
            f"**{r['p50']:.0f} ms** | {r['p95']:.0f} ms | **{r['p99']:.0f} ms** | "
            f"{r['max']:.0f} ms | {r['errors']} | {r['dropped']} |"
            for what, r in rows
        ),
        "",
        "The same events, in the same scans, to a live view in the RunEngine's process",
        "(`sl.add_live_view`: the worker sends each batch's results back over its pipe as it",
        "publishes them; this is the path the adaptive plans read, and it skips Tiled):",
        "",
        "| plugin | seen | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['plugin']} | {r['live_seen']}/{r['events']} | **{r['live_p50']:.0f} ms** | "
            f"{r['live_p95']:.0f} ms | **{r['live_p99']:.0f} ms** | {r['live_max']:.0f} ms |"
            for _, r in rows
        ),
        "",
        "Target (small CNNs on CPU): p50 at most 50 ms, p99 at most 250 ms, to a separate Tiled",
        f"client. Measured for phase_cnn: p50 {cnn['p50']:.0f} ms, p99 {cnn['p99']:.0f} ms "
        f"({'met' if met else 'not met'}); to the live view p50 {cnn['live_p50']:.0f} ms, "
        f"p99 {cnn['live_p99']:.0f} ms.",
        "",
        "Why the Tiled path is slow: the analysis takes a few milliseconds per event; the time",
        "goes to Tiled's cost per request. With tiled 0.2.20 on this machine one request costs",
        "the server about 70 ms even when idle (FastAPI's dependency resolution, SQLAlchemy",
        "catalog queries; [profile](profiling.md)): a result part is two requests (its node,",
        "then its data), and one poll of the reader is three (the node, the listing, the new",
        "part), about 200 ms each way, idle. Under a steady scan one 2-core machine also runs",
        "the RunEngine, SmartLab's worker, the raw run's `TiledWriter` and the reader, all",
        "asking the same server, which answers one request at a time; a stage-by-stage",
        "breakdown ([profiling](profiling.md#latency-stage-by-stage)) puts most of the",
        "latency between a part being written and the reader's next completed poll. The",
        "publisher already merges whatever arrives while a write is in flight into the next",
        "part, so its load does not grow with the event rate; the floor with Tiled in the",
        "path is a few hundred milliseconds here. Ways on: a faster Tiled server (several",
        "workers on PostgreSQL, issue 10; a newer tiled's streaming), and for anything that",
        "steers the experiment, the live view above.",
        "",
        "Why phase_cnn's live view lags too: at 40-50 frames/s the worker has no spare CPU on",
        "2 cores. It runs at nice 5, so that the RunEngine comes first, and so gets what the",
        "Tiled server and the polling reader (both nice 0) leave it; the backlog grows through",
        "the scan. In one 300-event run with the worker at nice 0 instead, its live p50 was",
        "1.2 s and the scan itself slowed from 40 to 33 frames/s: on this machine one of the",
        "two has to give. peak_stats' analysis is cheap, and its live view keeps up.",
        "",
        f"Machine: {machine()}.",
    ]
    print(f"wrote {write_section('latency', lines)}")
    peak = next(row for _, row in rows if row["plugin"] == "peak_stats")
    record(
        "latency",
        [
            figure(
                f"Latency to a reader, phase_cnn, {events:,} events",
                f"p50 {cnn['p50']:.0f} ms, p99 {cnn['p99']:.0f} ms; {cnn['dropped']} dropped",
                "p50 at most 50 ms, p99 at most 250 ms",
                met,
            ),
            figure(
                f"Latency to a live view in the RunEngine's process, phase_cnn, {events:,} events",
                f"p50 {cnn['live_p50']:.0f} ms, p99 {cnn['live_p99']:.0f} ms "
                "(Tiled not in the path)",
            ),
            figure(
                f"Latency to a reader, peak_stats, {events:,} events",
                f"p50 {peak['p50']:.0f} ms, p99 {peak['p99']:.0f} ms; {peak['dropped']} dropped",
            ),
        ],
    )


if __name__ == "__main__":
    main()
