"""``BrokerWorker``: the engine of ``smartlab worker``, analysing documents from Redis.

Sharding. The publisher puts each run on one of ``shards`` streams (chosen at
its start document). A worker owns a shard through a lease in Redis (``SET NX
PX``, renewed by a heartbeat thread) and is its only reader, so one run is
analysed by one worker at a time, in order: stateful plugins (the LSTM) see
every event of their run, in sequence. Workers share the shards fairly
(``ceil(shards / live workers)`` each); a worker with more than its share
hands back shards that have no run open, so a worker that joins gets work at
the next run.

Acknowledgement. The entries of a run stay pending (read, not acknowledged)
until the run's stop document has been analysed and every result of the run
is in the publisher's journal on local disk; then they are acknowledged
(``XACK``) together, and the stream trimmed up to the oldest entry still
pending. Entries of no run (malformed, or naming no run) are acknowledged once
handled, so none loops.

Takeover. A worker that dies stops renewing its leases; after ``lease_s``
another worker (or the same one restarted) takes the shard, writes the
journals dead workers left on this machine, claims every pending entry of the
shard (``XAUTOCLAIM``) and analyses those runs again from their start
documents, so plugins rebuild their state. Results Tiled already has are not
written twice: :class:`ResumingPublisher` reads, for each such run, which
events each analysis already has and how many parts, carries the same
analysis node on and drops results for those events.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smartlab_plugins.connection import client_factory
from smartlab_plugins.protocol import Shipment, WorkerConfig
from smartlab_plugins.publish import Publisher
from smartlab_plugins.publish.resume import TRANSPORT, ResumingPublisher, existing_results
from smartlab_plugins.retry import Backoff
from smartlab_plugins.transport import codec
from smartlab_plugins.transport.settings import BrokerSettings, connect
from smartlab_plugins.worker.serving import Session

logger = logging.getLogger(__name__)

READ_COUNT = 500
#: Renew a lease we hold, or take it again if it lapsed while nobody else took it.
RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaseLost(RuntimeError):
    """Another worker holds a shard this one was analysing (this one stalled past its lease)."""


class _BrokerSession(Session):
    publisher_class = ResumingPublisher


@dataclass
class _OpenRun:
    shard: int
    entries: list[bytes] = field(default_factory=list)


class BrokerWorker:
    """Consume a broker's documents, analyse them with the enabled plugins, publish to Tiled.

    ``config`` is the analysis side, as for an in-process SmartLab worker
    (Tiled server, plugins, limits); ``settings`` the broker. :meth:`run`
    serves until :meth:`stop` is called (``smartlab worker`` calls it on
    SIGTERM and SIGINT).
    """

    def __init__(
        self,
        config: WorkerConfig,
        settings: BrokerSettings,
        name: str | None = None,
        block_s: float = 0.5,
        journal_wait_s: float = 60.0,
    ) -> None:
        import redis

        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._redis = connect(settings)
        self._renew = self._redis.register_script(RENEW)
        self._release = self._redis.register_script(RELEASE)
        for shard in range(settings.shards):
            try:
                self._redis.xgroup_create(
                    settings.stream(shard), settings.group, "0", mkstream=True
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        config.annotations = {**config.annotations, "transport": TRANSPORT, "worker": self.name}
        self.config = config
        self.session = _BrokerSession(config)
        self.publisher: ResumingPublisher = self.session.publisher  # type: ignore[assignment]
        self._block_ms = int(block_s * 1000)
        self._journal_wait_s = journal_wait_s
        self._owned: set[int] = set()
        self._open: dict[str, _OpenRun] = {}
        self._finished: list[str] = []
        self._seen: dict[tuple[bytes, bytes], int] = {}  # (stream, source) -> last count
        self._lost: int | None = None
        self._stopping = threading.Event()
        self._next_balance = 0.0
        self._lease_lock = threading.Lock()
        self.rejected = 0
        self.duplicates = 0
        self.acknowledged = 0
        self._register()
        self._heartbeat = threading.Thread(target=self._beat, name="smartlab-lease", daemon=True)
        self._heartbeat.start()

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`; raises LeaseLost if another worker took a shard of ours."""
        import redis

        logger.info(
            "SmartLab worker %s: consuming %d shard(s) of %s (prefix %r), publishing to %s",
            self.name,
            self.settings.shards,
            self.settings.shown_uri,
            self.settings.prefix,
            self.config.tiled_uri,
        )
        down_since = None
        while not self._stopping.is_set():
            try:
                self._step()
                if down_since is not None:
                    logger.warning("the broker at %s is back", self.settings.shown_uri)
                    down_since = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.error(
                        "lost the broker at %s (%s); retrying", self.settings.shown_uri, exc
                    )
                self._stopping.wait(1.0)
        self._close()

    def stop(self) -> None:
        self._stopping.set()

    def _step(self) -> None:
        if self._lost is not None:
            raise LeaseLost(
                f"worker {self.name}: another worker now holds shard {self._lost} (this one "
                f"did not renew its lease within {self.settings.lease_s:g} s); exiting so that "
                "its open runs are analysed once, by the new holder"
            )
        if time.monotonic() >= self._next_balance:
            self._balance()
            self._next_balance = time.monotonic() + min(1.0, self.settings.lease_s / 3)
        if not self._owned:
            self._stopping.wait(self._block_ms / 1000)
            return
        streams = {self.settings.stream(s): ">" for s in sorted(self._owned)}
        replies = self._redis.xreadgroup(
            self.settings.group, self.name, streams, count=READ_COUNT, block=self._block_ms
        )
        for stream, entries in replies or []:
            self._handle(self._shard_of(stream), entries)
        self._acknowledge_finished()

    def _shard_of(self, stream: bytes | str) -> int:
        return int((stream.decode() if isinstance(stream, bytes) else stream).rsplit(":", 1)[1])

    # -- documents -------------------------------------------------------------

    def _handle(self, shard: int, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Decode a shard's entries in order, analyse them, note what to acknowledge when."""
        stream = self.settings.stream(shard).encode()
        docs: list[tuple[str, Any]] = []
        now: list[bytes] = []  # acknowledged once analysed: they belong to no open run
        for entry_id, fields in entries:
            if not fields:  # deleted (trimmed) while pending
                now.append(entry_id)
                continue
            try:
                name, doc = codec.decode(fields)
            except codec.MalformedMessage as exc:
                self.rejected += 1
                logger.error("rejected entry %s of %s: %s", entry_id.decode(), stream.decode(), exc)
                now.append(entry_id)
                continue
            if self._is_duplicate(stream, fields):
                self.duplicates += 1
                now.append(entry_id)
                continue
            docs.append((name, doc))
            run = fields.get(codec.RUN, b"").decode(errors="replace")
            if run:
                self._open.setdefault(run, _OpenRun(shard)).entries.append(entry_id)
                if name == "stop":
                    self._finished.append(run)
            else:
                now.append(entry_id)
        if docs:
            self.session.ship(Shipment(docs))
        self._ack(shard, now)

    def _is_duplicate(self, stream: bytes, fields: Mapping[bytes, bytes]) -> bool:
        """An entry the publisher sent twice (it retried a round whose answer was lost)."""
        try:
            source, count = fields[codec.SOURCE], int(fields[codec.COUNT])
        except (KeyError, ValueError):
            return False
        last = self._seen.get((stream, source), 0)
        if count <= last:
            return True
        self._seen[(stream, source)] = count
        return False

    def _acknowledge_finished(self) -> None:
        """Acknowledge the runs whose stop was analysed, once their results are journaled."""
        if not self._finished or not self._journaled():
            return
        for run in self._finished:
            opened = self._open.pop(run, None)
            if opened is not None:
                self._ack(opened.shard, opened.entries)
        self._finished = []

    def _journaled(self) -> bool:
        deadline = time.monotonic() + self._journal_wait_s
        while self.publisher.stats()["not_journaled"]:
            if time.monotonic() > deadline:
                logger.error(
                    "results not in the local journal after %.0f s; the run's entries stay pending",
                    self._journal_wait_s,
                )
                return False
            time.sleep(0.01)
        return True

    def _ack(self, shard: int, ids: list[bytes]) -> None:
        if not ids:
            return
        stream = self.settings.stream(shard)
        for start in range(0, len(ids), 10_000):
            self.acknowledged += self._redis.xack(
                stream, self.settings.group, *ids[start : start + 10_000]
            )
        self._trim(shard, ids[-1])

    def _trim(self, shard: int, last_acked: bytes) -> None:
        """Drop the entries before the oldest still pending (all acknowledged)."""
        stream = self.settings.stream(shard)
        pending = self._redis.xpending(stream, self.settings.group)
        oldest = pending["min"] if pending["pending"] else None
        if oldest is None:
            ms, seq = last_acked.decode().split("-")
            oldest = f"{ms}-{int(seq) + 1}"
        self._redis.xtrim(stream, minid=oldest)

    # -- shards ----------------------------------------------------------------

    def _register(self) -> None:
        now = time.time()
        score = self._redis.zscore(self.settings.workers_key, self.name)
        if score is not None and score > now - self.settings.lease_s:
            raise RuntimeError(
                f"a SmartLab worker named {self.name!r} is already consuming from "
                f"{self.settings.shown_uri}; give each worker its own --name"
            )
        self._redis.zadd(self.settings.workers_key, {self.name: now})

    def _live_workers(self) -> list[str]:
        now = time.time()
        key = self.settings.workers_key
        self._redis.zremrangebyscore(key, "-inf", now - 3 * self.settings.lease_s)
        return [
            n.decode() for n in self._redis.zrangebyscore(key, now - self.settings.lease_s, "+inf")
        ]

    def _balance(self) -> None:
        """Take free shards up to a fair share; hand back idle ones beyond it."""
        live = self._live_workers()
        share = math.ceil(self.settings.shards / max(1, len(live)))
        lease_ms = int(self.settings.lease_s * 1000)
        start = sorted(live).index(self.name) * share if self.name in live else 0
        for offset in range(self.settings.shards):
            if len(self._owned) >= share or self._stopping.is_set():
                break
            shard = (start + offset) % self.settings.shards
            if shard in self._owned:
                continue
            with self._lease_lock:
                taken = self._redis.set(self.settings.lease(shard), self.name, nx=True, px=lease_ms)
                if taken:
                    self._owned.add(shard)
            if taken:
                self._take_over(shard)
        busy = {run.shard for run in self._open.values()}
        for shard in sorted(self._owned - busy, reverse=True):
            if len(self._owned) <= share:
                break
            with self._lease_lock:
                self._owned.discard(shard)
                self._release(keys=[self.settings.lease(shard)], args=[self.name])
            logger.info(
                "worker %s: handed shard %d back (%d workers live)", self.name, shard, len(live)
            )

    def _take_over(self, shard: int) -> None:
        """Own ``shard`` (its lease just taken): analyse again what its earlier owners left
        pending, then follow it."""
        self._write_orphaned_journals()
        stream = self.settings.stream(shard)
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor = "0-0"
        while True:
            reply = self._redis.xautoclaim(
                stream, self.settings.group, self.name, 0, start_id=cursor, count=READ_COUNT
            )
            cursor, entries = reply[0], reply[1]
            claimed += entries
            if cursor in (b"0-0", "0-0"):
                break
        if claimed:
            runs = {f.get(codec.RUN, b"").decode(errors="replace") for _, f in claimed if f}
            runs.discard("")
            logger.warning(
                "worker %s: took over shard %d with %d pending entries of %d run(s); "
                "analysing them again, without repeating results Tiled has",
                self.name,
                shard,
                len(claimed),
                len(runs),
            )
            self._prepare_resume(runs)
            self._handle(shard, claimed)
        else:
            logger.info("worker %s: owns shard %d", self.name, shard)

    def _write_orphaned_journals(self) -> None:
        """Write the results journals that dead workers on this machine left, before
        reading what Tiled has (so their results count as had, not as missing)."""
        if not self.config.spool_dir:
            return
        from pathlib import Path

        orphans = Publisher(
            client_factory(self.config.tiled_uri, self.config.api_key),
            journal_dir=Path(self.config.spool_dir),
            tiled_uri=self.config.tiled_uri,
        )
        if not orphans.flush(timeout=self._journal_wait_s):
            logger.error("could not write journals left by dead workers: Tiled is away")
        orphans.close(timeout=5)

    def _prepare_resume(self, runs: set[str]) -> None:
        """Tell the publisher what Tiled has of ``runs`` (waiting while Tiled is away)."""
        backoff = Backoff(initial=0.5, maximum=10.0, transient=lambda exc: True)
        make_client = client_factory(self.config.tiled_uri, self.config.api_key)
        while not self._stopping.is_set():
            try:
                client = make_client()
                for run in runs:
                    for plugin, existing in existing_results(client, run).items():
                        self.publisher.resume(run, plugin, existing)
                return
            except Exception as exc:
                delay = backoff.next_delay(exc)
                logger.error(
                    "cannot read what Tiled has of %d run(s) taken over (%s: %s); retrying in "
                    "%.1f s",
                    len(runs),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._stopping.wait(delay)

    def _beat(self) -> None:
        """Renew the leases and the worker's liveness every third of a lease."""
        lease_ms = int(self.settings.lease_s * 1000)
        while not self._stopping.wait(self.settings.lease_s / 3):
            with contextlib.suppress(Exception):  # broker away: renewed when it is back
                self._redis.zadd(self.settings.workers_key, {self.name: time.time()})
                with self._lease_lock:
                    self._renew_all(lease_ms)

    def _renew_all(self, lease_ms: int) -> None:
        for shard in self._owned:
            if not self._renew(keys=[self.settings.lease(shard)], args=[self.name, lease_ms]):
                self._lost = shard
                logger.error("worker %s: lost the lease of shard %d", self.name, shard)

    def _close(self) -> None:
        """Write what is analysed; hand the shards back for another worker to carry on."""
        flushed = self.session.publisher.flush(timeout=30)
        if self.session.raw is not None:
            self.session.raw.flush(timeout=30)
        with contextlib.suppress(Exception):
            if flushed:  # else the leases lapse: a successor then finds the journal written
                for shard in self._owned:
                    self._release(keys=[self.settings.lease(shard)], args=[self.name])
            self._redis.zrem(self.settings.workers_key, self.name)
        self._owned.clear()
        self.session.publisher.close(timeout=10)
        if self.session.raw is not None:
            self.session.raw.close(timeout=10)
        if self._open:
            logger.warning(
                "worker %s stopped with %d run(s) open; their documents stay pending for the "
                "next worker",
                self.name,
                len(self._open),
            )

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shards": sorted(self._owned),
            "open_runs": len(self._open),
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "acknowledged": self.acknowledged,
            "skipped_events": self.publisher.skipped_events,
        }
