"""The raw run is readable while it is written: rows reach Tiled within about a second.

A real Tiled server, a real RunEngine with ``ophyd.sim.det``, its documents
normalized by bluesky-tiled-plugins' ``RunNormalizer`` as the worker's batch
assembler does and passed to :class:`RawRunWriter`, and a reader polling
``client[uid]["primary"]`` every 0.1 s on a thread of its own.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky import RunEngine
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
from ophyd.sim import det

from smartlab_plugins.publish import RawRunWriter
from smartlab_plugins.server import EmbeddedServer

POLL_SECONDS = 0.1


class Reader:
    """Polls the run's ``primary`` stream; notes when each ``seq_num`` is first seen."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.client = server.client()
        self.uid: str | None = None
        self.seen: dict[int, float] = {}
        self.counts: list[tuple[float, int]] = []  # (time, rows) of each successful read
        self.errors: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def wait_for(self, rows: int, timeout: float) -> None:
        """Keep reading until ``rows`` rows have been seen, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < rows and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def _poll(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            if self.uid is None:
                continue
            try:
                # the stream's table by its path (a fresh node each time: the table grows), not
                # the column as an array: tiled 0.2.20 refuses (HTTP 500) and retries for up to
                # 45 s a column read that an append overtakes
                table = self.client[f"{self.uid}/primary/internal"]
                seq_nums = table.read(["seq_num"])["seq_num"]
            except KeyError:
                continue  # the run or its stream is not created yet
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            now = time.time()
            self.counts.append((now, len(seq_nums)))
            for seq_num in seq_nums:
                self.seen.setdefault(int(seq_num), now)


def run_live(
    server: EmbeddedServer, plan: Any, max_delay: float = 0.5
) -> tuple[Reader, dict[str, Any], int]:
    """Run ``plan`` with its documents to a RawRunWriter and a reader watching.

    Returns the reader, the documents noted (``uid``, event times by seq_num, when
    the stop was emitted) and the number of raw documents that could not be written.
    """
    writer = RawRunWriter(server.client, max_delay=max_delay)
    normalizer = RunNormalizer()
    normalizer.subscribe(writer.put)
    noted: dict[str, Any] = {"events": {}}

    def note(name: str, doc: dict) -> None:
        if name == "start":
            noted["uid"] = reader.uid = doc["uid"]
        elif name == "event":
            noted["events"][doc["seq_num"]] = doc["time"]
        elif name == "stop":
            noted["stop"] = time.time()

    RE = RunEngine()
    RE.subscribe(note)
    RE.subscribe(normalizer)
    with Reader(server) as reader:
        RE(plan)
        failures, done = writer.run_failures(noted["uid"], timeout=30)
        assert done, "the raw-run writer did not reach the stop document within 30 s"
        reader.wait_for(len(noted["events"]), timeout=5)
    writer.close()
    return reader, noted, failures


def test_rows_reach_a_reader_during_the_scan(tiled_server: EmbeddedServer) -> None:
    """120 events at about 10/s: the reader sees them arrive about 1 s late (the bound is
    2.5 s for a busy machine; a writer that kept rows until the stop of this 12 s scan
    would be about 6 s late)."""
    reader, noted, failures = run_live(tiled_server, bp.count([det], 120, delay=0.1))

    assert failures == 0
    assert not reader.errors, f"the reader failed {len(reader.errors)} times: {reader.errors[:3]}"
    during = sorted({rows for at, rows in reader.counts if at < noted["stop"] and rows > 0})
    assert len(during) >= 2, (
        f"expected the row count to grow during the scan, read before the stop: {during}"
    )
    staleness = [reader.seen[s] - t for s, t in noted["events"].items() if s in reader.seen]
    assert len(staleness) == 120
    assert statistics.median(staleness) <= 2.5, (
        f"expected a median staleness of at most 2.5 s, got {statistics.median(staleness):.2f} s"
    )
    seq_nums = tiled_server.client()[noted["uid"]]["primary"]["seq_num"].read()
    assert sorted(seq_nums.tolist()) == list(range(1, 121))


def test_rows_are_written_when_no_more_documents_come(tiled_server: EmbeddedServer) -> None:
    """One event, then 8 s of nothing: the row is readable long before the stop."""

    def one_event_then_wait():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det])
        yield from bps.sleep(8)
        yield from bps.close_run()

    reader, noted, failures = run_live(tiled_server, one_event_then_wait())

    assert failures == 0
    assert not reader.errors, f"the reader failed {len(reader.errors)} times: {reader.errors[:3]}"
    assert 1 in reader.seen
    assert reader.seen[1] - noted["events"][1] <= 4  # written at most 0.5 s after; a busy server
    assert reader.seen[1] < noted["stop"] - 4  # not kept until the stop
