"""``smartlab demo --distributed``: the live pipeline through a broker, two remote workers.

Starts, on loopback and in a temporary folder, what a facility runs on three
machines: Redis (the broker), PostgreSQL with the Tiled server on it (the shared
results store), and two ``smartlab worker`` processes (the analysis machines).
A RunEngine (the acquisition machine) then runs four scans with a
:class:`~smartlab_plugins.transport.BrokerPublisher` subscribed, beside an
in-process ``SmartLab`` doing the same analysis for comparison. The demo prints
which worker analysed each run and checks that its published rows and summary
are identical to the in-process ones, then stops everything.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

#: The plugins both paths run: the beam monitor's and one science CNN (inelastic scattering).
PLUGINS = ("peak_stats", "spinwave_cnn")
WORKERS = 2
#: One shard per worker: runs take shards in turn, so consecutive runs go to different workers
#: (a facility keeps the default 8, for up to 8 workers).
SHARDS = WORKERS


#: How far a float result may move with the batch it was computed in: the in-process worker
#: and a remote one micro-batch events differently, and a CNN's float32 sums round differently
#: for different batch sizes (last bits only).
FLOAT_RTOL = 1e-5


@dataclass
class Comparison:
    """One run and plugin: the broker worker's analysis against the in-process one."""

    run_uid: str
    plugin: str
    worker: str
    rows: int
    identical: bool  # the same rows and summary, bit for bit
    max_difference: float = 0.0  # largest relative difference of a float result, if not
    raw_events: int = 0  # events of the raw run the worker wrote beside the results

    @property
    def equal(self) -> bool:
        """The same events, and every value equal to float32 rounding."""
        return self.identical or self.max_difference <= FLOAT_RTOL


def relative_difference(remote: Any, local: Any) -> float:
    """The largest relative difference between two results tables (inf: different rows)."""
    import numpy as np

    if list(remote.columns) != list(local.columns) or len(remote) != len(local):
        return float("inf")
    if not remote["seq_num"].equals(local["seq_num"]):
        return float("inf")
    a = remote.drop(columns=["time"]).to_numpy(dtype=float)
    b = local.drop(columns=["time"]).to_numpy(dtype=float)
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, np.abs(a - b) / scale, 0.0)
    same_nan = np.isnan(a) & np.isnan(b)
    return float(np.max(np.where(same_nan, 0.0, rel), initial=0.0))


@dataclass
class Services:
    """The demo's servers, as a facility would have them on the broker + Tiled machine."""

    broker_uri: str
    tiled_uri: str
    api_key: str
    catalog: str  # what the Tiled catalog lives in, for the printout


@contextlib.contextmanager
def services(run_dir: Path, out: TextIO) -> Iterator[Services]:
    """Redis, PostgreSQL and a Tiled server on it, for the duration."""
    from smartlab_plugins.adaptive.qserver import RedisServer
    from smartlab_plugins.postgres import PostgresServer
    from smartlab_plugins.server import EmbeddedServer

    print("Starting redis-server (the broker) ...", file=out, flush=True)
    with RedisServer(run_dir / "redis") as redis:
        print("Starting PostgreSQL and a Tiled server on it (the results store) ...", file=out)
        with PostgresServer() as postgres:  # a folder of its own, which the postgres user can reach
            # Tiled's streaming cache in Redis too: more server processes could share it
            tiled = EmbeddedServer(
                run_dir / "tiled",
                catalog_uri=postgres.uri,
                streaming_cache=f"redis://{redis.address}/1",
            )
            with tiled:
                yield Services(
                    f"redis://{redis.address}/0",
                    tiled.uri,
                    tiled.api_key,
                    f"PostgreSQL {postgres.display_uri}",
                )


def _scans(RE: Any, runs: int, points: int) -> list[str]:
    """``runs`` scans, alternating the beam monitor and the spectrometer; their uids."""
    import bluesky.plans as bp

    from smartlab_plugins.devices import beam, ins

    uids = []
    for i in range(runs):
        if i % 2 == 0:
            devices = beam.make_devices(seed=i)
            uids += RE(bp.scan([devices["beam"]], devices["steer"], -4, 4, points))
        else:
            uids += RE(bp.count([ins.make_devices(seed=i)["ins"]], num=points // 4))
    return uids


def compare(client: Any, uids: list[str], timeout: float = 120.0) -> list[Comparison]:
    """Each run's broker analysis (once complete) against its in-process twin."""
    import time

    from smartlab_plugins.results import find_analyses, read_events

    comparisons = []
    for uid in uids:
        analyses = find_analyses(client, run_uid=uid)
        local = {a.metadata["plugin"]: a for a in analyses if "transport" not in a.metadata}
        for plugin, in_process in sorted(local.items()):
            deadline = time.monotonic() + timeout
            while True:
                remote = find_analyses(client, run_uid=uid, plugin=plugin, transport="redis")
                if remote and remote[-1].metadata["status"] != "running":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no worker finished {plugin} of run {uid} in {timeout} s")
                time.sleep(0.1)
            (remote_analysis,) = remote
            remote_rows, local_rows = read_events(remote_analysis), read_events(in_process)
            same = remote_rows.equals(local_rows) and remote_analysis.metadata.get(
                "summary"
            ) == in_process.metadata.get("summary")
            difference = 0.0 if same else relative_difference(remote_rows, local_rows)
            worker = remote_analysis.metadata["worker"]
            raw = len(client[uid]["primary"].read()["time"]) if uid in client else 0
            comparisons.append(
                Comparison(uid, plugin, worker, len(remote_rows), same, difference, raw)
            )
    return comparisons


def run_distributed_demo(
    runs: int = 4, points: int = 41, out: TextIO = sys.stdout, run_dir: Path | None = None
) -> list[Comparison]:
    """Run the distributed demo and print the comparison; return it (for tests)."""
    from bluesky import RunEngine
    from tiled.client import from_uri

    from smartlab_plugins import SmartLab
    from smartlab_plugins.transport import BrokerPublisher
    from smartlab_plugins.transport.local import WorkerProcess, wait_for_shares
    from smartlab_plugins.transport.settings import BrokerSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smartlab-")))
        spool = {"SMARTLAB_SPOOL_DIR": str(run_dir / "spool")}
        found = stack.enter_context(services(run_dir, out))
        names = [f"worker-{i + 1}" for i in range(WORKERS)]
        plugins = ", ".join(PLUGINS)
        print(f"Starting {WORKERS} `smartlab worker` processes ({plugins}) ...", file=out)
        workers = [
            WorkerProcess(
                name,
                found.tiled_uri,
                found.api_key,
                run_dir,
                PLUGINS,
                extra_args=["--broker", found.broker_uri, "--shards", str(SHARDS)],
                env=spool,
            )
            for name in names
        ]
        for worker in workers:
            stack.callback(worker.stop)
        local = SmartLab(found.tiled_uri, found.api_key, plugins=list(PLUGINS), raw=False)
        stack.callback(local.close)  # started while the workers start (both load the plugins)
        broker = BrokerSettings.load(uri=found.broker_uri, shards=SHARDS)
        wait_for_shares(broker, names, timeout=120)
        RE = RunEngine()
        publisher = BrokerPublisher(found.broker_uri, shards=SHARDS, spool_dir=run_dir / "spool")
        stack.callback(publisher.close)
        RE.subscribe(publisher)
        RE.subscribe(local)
        print(
            f"Scanning: {runs} runs, through the broker to the workers and in-process ...",
            file=out,
            flush=True,
        )
        uids = _scans(RE, runs, points)
        publisher.flush(timeout=60)
        local.flush(timeout=120)
        client = from_uri(found.tiled_uri, api_key=found.api_key)
        comparisons = compare(client, uids)
        _report(out, found, comparisons)
        return comparisons


def _report(out: TextIO, found: Services, comparisons: list[Comparison]) -> None:
    header = f"{'run':10} {'raw events':>10}  {'plugin':13} {'analysed by':12} {'rows':>5}"
    lines = [f"{header}  same as in-process"]
    for c in comparisons:
        if c.identical:
            verdict = "identical"
        elif c.equal:
            verdict = f"equal to float32 rounding (relative difference {c.max_difference:.0e})"
        else:
            verdict = f"DIFFERENT (relative difference {c.max_difference:.0e})"
        lines.append(
            f"{c.run_uid[:8]:10} {c.raw_events:10}  {c.plugin:13} {c.worker:12} {c.rows:5}  "
            f"{verdict}"
        )
    identical = sum(c.identical for c in comparisons)
    equal = sum(c.equal for c in comparisons)
    workers = sorted({c.worker for c in comparisons})
    print(
        f"\nBroker:        {found.broker_uri} (Redis Streams)\n"
        f"Tiled server:  {found.tiled_uri} (catalog and tables in {found.catalog})\n\n"
        + "\n".join(lines)
        + f"\n\n{equal} of {len(comparisons)} analyses equal to the in-process ones, "
        f"{identical} of them bit for bit\n(a CNN's float32 sums round differently in batches "
        f"of other sizes); runs spread over {len(workers)} workers: {', '.join(workers)}.\n"
        "Every server stopped with the demo. At a facility the same pieces run on three "
        "machines:\nsee docs/distributed.md, 'Single machine and three machines'.",
        file=out,
    )
