"""The Redis transport: RunEngine slowdown with BrokerPublisher, and throughput with N workers.

* RunEngine side: ``RE(count([det], num=500))`` with no subscriber and with
  :class:`~smartlab_plugins.transport.BrokerPublisher` subscribed, interleaved
  (order alternating), repeated; the median of the per-repeat ratio.
* Workers: ``runs`` scans of ``events`` S(Q, E) maps each (the simulated
  spectrometer), recorded once, then put on the broker all at once and
  analysed by ``spinwave_cnn`` (a CNN forward pass per event, torch on one
  thread: CPU-bound) in 1, then 2, ``smartlab worker`` processes; time from
  the first document sent to the last run acknowledged (its results
  journaled). The workers are started and share the shards before the clock
  starts.

On a 2-core machine the two workers share the cores with Redis, the Tiled
server and this process, so the 2-worker figure is a floor, not what two
machines would give.

    python benchmarks/transport.py [--events 500] [--repeats 5] [--runs 8] [--run-events 50]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bluesky.plans as bp
import redis
from bluesky import RunEngine

from smartlab_plugins.adaptive.qserver import RedisServer
from smartlab_plugins.server import EmbeddedServer
from smartlab_plugins.transport import BrokerPublisher, BrokerSettings
from smartlab_plugins.transport.local import WorkerProcess, wait_for_shares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record

RE_TARGET = 1.05
SCALING_TARGET = 0.8  # of N times the one-worker throughput


def re_overhead(RE: RunEngine, events: int, repeats: int) -> tuple[list[float], list[float]]:
    from ophyd.sim import det

    publisher = BrokerPublisher(prefix="bench-re")
    times: dict[str, list[float]] = {"bare": [], "broker": []}
    for subscriber in (None, publisher):  # warm-up
        token = RE.subscribe(subscriber) if subscriber else None
        RE(bp.count([det], num=20))
        if token is not None:
            RE.unsubscribe(token)
    for repeat in range(repeats):
        order = ["bare", "broker"] if repeat % 2 == 0 else ["broker", "bare"]
        for key in order:
            token = RE.subscribe(publisher) if key == "broker" else None
            started = time.perf_counter()
            RE(bp.count([det], num=events))
            times[key].append(time.perf_counter() - started)
            if token is not None:
                RE.unsubscribe(token)
                publisher.flush(timeout=60)  # drained outside the timed region
        print(
            f"RunEngine repeat {repeat + 1}/{repeats}: bare {times['bare'][-1]:.2f} s, "
            f"broker {times['broker'][-1]:.2f} s",
            flush=True,
        )
    publisher.close()
    return times["bare"], times["broker"]


def record_runs(RE: RunEngine, runs: int, events: int) -> list[list[tuple[str, dict]]]:
    from smartlab_plugins.devices import ins

    detector = ins.make_devices(seed=1)["ins"]
    recorded = []
    for _ in range(runs):
        docs: list[tuple[str, dict]] = []
        RE(bp.count([detector], num=events), lambda name, doc, docs=docs: docs.append((name, doc)))
        recorded.append(docs)
    return recorded


def start_workers(n: int, prefix: str, tiled: EmbeddedServer, folder: Path) -> list:
    env = {"OMP_NUM_THREADS": "1", "SMARTLAB_SPOOL_DIR": str(folder / "spool")}
    return [
        WorkerProcess(
            f"{prefix}-{i}",
            tiled.uri,
            tiled.api_key,
            folder,
            ["spinwave_cnn"],
            extra_args=["--prefix", prefix, "--no-raw"],
            env=env,
        )
        for i in range(n)
    ]


def throughput(
    n: int, recorded: list, client: redis.Redis, tiled: EmbeddedServer, folder: Path
) -> float:
    """Events per second analysed by ``n`` workers, the runs put on the broker at once."""
    prefix = f"bench-{n}"
    settings = BrokerSettings.load(prefix=prefix)
    workers = start_workers(n, prefix, tiled, folder)
    wait_for_shares(settings, [w.name for w in workers], timeout=120)
    publisher = BrokerPublisher(prefix=prefix)
    started = time.perf_counter()
    for docs in recorded:
        for name, doc in docs:
            publisher(name, doc)
    publisher.flush(timeout=120)
    total = sum(len(docs) for docs in recorded)
    while True:  # every entry read and acknowledged
        done = 0
        for s in range(settings.shards):
            (group,) = client.xinfo_groups(settings.stream(s))
            done += (group["entries-read"] or 0) if not group["pending"] and not group["lag"] else 0
        if done >= total or time.perf_counter() - started > 300:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    publisher.close()
    for worker in workers:
        worker.stop(timeout=60)
    events = sum(1 for docs in recorded for name, _ in docs if name == "event")
    print(f"{n} worker(s): {events} events in {elapsed:.2f} s", flush=True)
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="events of the RunEngine count")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the RunEngine count")
    parser.add_argument("--runs", type=int, default=8, help="runs analysed by the workers")
    parser.add_argument("--run-events", type=int, default=50, help="events per such run")
    args = parser.parse_args()
    logging.getLogger("bluesky").setLevel(logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="smartlab-bench-") as tmp,
        RedisServer(Path(tmp) / "redis") as broker,
        EmbeddedServer(Path(tmp) / "tiled") as tiled,
    ):
        os.environ["SMARTLAB_BROKER_URI"] = f"redis://{broker.address}/0"
        os.environ["SMARTLAB_SPOOL_DIR"] = str(Path(tmp) / "spool")
        client = redis.Redis(host=broker.host, port=broker.port)
        RE = RunEngine()
        bare, broker_times = re_overhead(RE, args.events, args.repeats)
        recorded = record_runs(RE, args.runs, args.run_events)
        rates = {n: throughput(n, recorded, client, tiled, Path(tmp)) for n in (1, 2)}
    ratios = sorted(b / a for a, b in zip(bare, broker_times, strict=True))
    slowdown = statistics.median(ratios)
    speedup = rates[2] / rates[1]
    cores = len(os.sched_getaffinity(0))
    print(
        f"RunEngine with BrokerPublisher: {slowdown:.3f}x (range {ratios[0]:.3f}-{ratios[-1]:.3f})"
    )
    print(
        f"spinwave_cnn: 1 worker {rates[1]:.1f} events/s, 2 workers {rates[2]:.1f} events/s: "
        f"{speedup:.2f}x on {cores} cores shared with Redis, Tiled and this process"
    )
    record(
        "transport",
        [
            figure(
                "RunEngine slowdown, BrokerPublisher (Redis) vs no subscriber",
                f"{slowdown:.3f}x",
                f"<= {RE_TARGET}x",
                slowdown <= RE_TARGET,
            ),
            figure(
                f"spinwave_cnn throughput, 2 workers / 1 worker ({cores} shared cores)",
                f"{speedup:.2f}x ({rates[1]:.1f} -> {rates[2]:.1f} events/s)",
                f">= {2 * SCALING_TARGET:.1f}x",
                speedup >= 2 * SCALING_TARGET,
            ),
        ],
        machine=machine(),
        ratios=ratios,
        rates=rates,
    )


if __name__ == "__main__":
    main()
