"""Throughput of a CPU-bound plugin on the Dask compute engine: 1 vs 2 workers.

``spinwave_cnn`` analyses the same ``EVENTS`` simulated maps, fed to a
``SmartLab`` (worker in a child process, raw writing off) as fast as it takes
them, three ways: in the worker (no engine), and on ``compute="local:1"`` and
``"local:2"`` (worker processes of one thread each, which Dask gives one
BLAS/OpenMP thread each). Batches of ``--batch`` events are sent as tasks; the
lane waits for each in turn while the engine works on the next ones, so two
workers can analyse two batches at once. Each way gets a warm-up run (imports,
model loading in the Dask workers), then ``--repeats`` timed runs, first
document to everything published; the best is kept. The figure is the ratio
of events per second, 2 workers over 1. Results go to
``benchmarks/results/compute.json``; the numbers are printed.

    python benchmarks/compute.py [--events 256] [--batch 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from event_model import compose_run

from smartlab_plugins import SmartLab
from smartlab_plugins.devices import ins
from smartlab_plugins.server import EmbeddedServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record

PLUGIN = "spinwave_cnn"


def documents(maps: np.ndarray) -> list[tuple[str, dict]]:
    """One run of ``maps`` as a RunEngine would emit it: start, descriptor, events, stop."""
    run = compose_run(metadata={"smartlab": {"plugins": [PLUGIN]}})
    shape = list(maps.shape[1:])
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={"ins_sqw": {"source": "sim", "dtype": "array", "shape": shape}},
    )
    docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    for i, counts in enumerate(maps):
        event = descriptor.compose_event(
            data={"ins_sqw": counts}, timestamps={"ins_sqw": time.time()}, seq_num=i + 1
        )
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return docs


def timed_runs(server, maps, compute: str | None, batch: int, repeats: int) -> float:
    """The best events per second over ``repeats`` runs, after a warm-up run."""
    rates = []
    with SmartLab(
        server.uri, server.api_key, plugins=[PLUGIN], raw=False, max_batch=batch, compute=compute
    ) as smartlab:
        for repeat in range(repeats + 1):
            docs = documents(maps if repeat else maps[: 2 * batch])
            started = time.perf_counter()
            for name, doc in docs:
                smartlab(name, doc)
            smartlab.flush(timeout=600)
            if repeat:
                rates.append(len(maps) / (time.perf_counter() - started))
        for summary in smartlab.run_summaries:
            outcome = summary["plugins"][PLUGIN]
            if outcome["errors"] or outcome["disabled"]:
                raise RuntimeError(f"{compute or 'in the worker'}: {PLUGIN} failed: {outcome}")
        analysed = sum(s["plugins"][PLUGIN]["events"] for s in smartlab.run_summaries[1:])
    if analysed != repeats * len(maps):
        raise RuntimeError(f"{analysed} events analysed of {repeats * len(maps)}")
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=256, help="maps per timed run")
    parser.add_argument("--batch", type=int, default=16, help="events per task (max_batch)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per way")
    args = parser.parse_args()
    maps = ins.simulate(args.events, seed=21).inputs["sqw"]
    ways = {"in the worker": None, "1 Dask worker": "local:1", "2 Dask workers": "local:2"}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(Path(folder)) as server:
        for label, compute in ways.items():
            rates[label] = timed_runs(server, maps, compute, args.batch, args.repeats)
            print(f"{PLUGIN}, {label}: {rates[label]:.1f} events/s", flush=True)
    ratio = rates["2 Dask workers"] / rates["1 Dask worker"]
    print(f"2 Dask workers / 1: {ratio:.2f}x ({machine()})")
    record(
        "compute",
        [figure("spinwave_cnn throughput, 2 Dask workers / 1", f"{ratio:.2f}x")],
        events_per_s=rates,
        events=args.events,
        batch=args.batch,
        machine=machine(),
    )


if __name__ == "__main__":
    main()
