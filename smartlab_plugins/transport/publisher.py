"""``BrokerPublisher``: the RunEngine's documents onto Redis streams.

On the RunEngine thread it only appends ``(name, doc)`` to a deque, as
:class:`~smartlab_plugins.callbacks.smartlab.SmartLab` does; a sender thread
encodes the documents (:mod:`~smartlab_plugins.transport.codec`) and adds
them to the run's shard stream with ``XADD``, many per round trip, each round
in one ``MULTI``/``EXEC`` so it lands whole or not at all.

A run's shard is chosen at its start document (round-robin over the shards)
and every later document of the run follows it, so one stream holds the whole
run in order. When the broker goes away mid-run the documents wait on local
disk (:class:`~smartlab_plugins.spool.DiskQueue`), in order, and are sent
once it answers again; the scan never waits for it and never fails for it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from smartlab_plugins import settings as smartlab_settings
from smartlab_plugins.retry import Backoff
from smartlab_plugins.spool import DiskQueue
from smartlab_plugins.transport import codec
from smartlab_plugins.transport.settings import BrokerSettings, connect

logger = logging.getLogger(__name__)

#: Documents that name their run directly, and the key that does it.
RUN_KEYS = {"start": "uid", "descriptor": "run_start", "stop": "run_start", "resource": "run_start"}
RUN_KEYS["stream_resource"] = "run_start"
#: Documents that name their run through another document, and the key that names it.
PARENT_KEYS = {"event": "descriptor", "event_page": "descriptor", "datum": "resource"}
PARENT_KEYS |= {"datum_page": "resource", "stream_datum": "stream_resource"}
RETRY_MAX_S = 5.0


class BrokerAway(ConnectionError):
    """The broker did not answer (what the sender thread waits out)."""


def _always(exc: BaseException) -> bool:
    return True


class BrokerPublisher:
    """Send a RunEngine's documents to SmartLab's workers through a Redis broker.

    ``RE.subscribe(BrokerPublisher())`` reads the broker from
    ``SMARTLAB_BROKER_URI`` (or the config file, see
    :mod:`smartlab_plugins.transport.settings`). Raises
    :class:`~smartlab_plugins.transport.settings.BrokerUnreachable`, naming the
    URI, if the broker does not answer now; afterwards calling it never raises.

    Parameters
    ----------
    uri, shards, prefix
        Override the broker settings.
    spool_dir
        Where documents wait while the broker is away (default ``SMARTLAB_SPOOL_DIR``).
    batch
        Most documents sent in one round trip.
    maxlen
        Approximate cap on each shard stream's length, a safety net only: workers trim
        what they have acknowledged.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        shards: int | None = None,
        prefix: str | None = None,
        spool_dir: str | Path | None = None,
        batch: int = 500,
        maxlen: int = 1_000_000,
    ) -> None:
        self.settings = BrokerSettings.load(uri=uri, shards=shards, prefix=prefix)
        self._redis = connect(self.settings)
        self._source = uuid.uuid4().hex
        self._batch = batch
        self._maxlen = maxlen
        self._spool_dir = Path(spool_dir or smartlab_settings.spool_dir())
        self._pending: deque[tuple[Any, Any]] = deque()
        self._wake = threading.Event()
        self._sent_cond = threading.Condition()
        self._accepted = 0
        self._sent = 0
        self._count = 0
        self._next_shard = 0
        self._shard_of_run: dict[str, int] = {}
        self._run_of: dict[str, str] = {}
        self._disk: DiskQueue | None = None
        self._retrying: list[tuple[int, dict[bytes, Any]]] = []  # failed once, sent first
        self._down_since: float | None = None
        self.buffered_total = 0
        self.unsendable = 0
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="smartlab-broker", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the RunEngine side: O(1), never raises ------------------------------

    def __call__(self, name: Any, doc: Any) -> None:
        if self._closed:
            return
        self._pending.append((name, doc))
        self._accepted += 1
        if not self._wake.is_set():
            self._wake.set()

    # -- the sender thread ----------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=RETRY_MAX_S, transient=_always)
        while True:
            if self._down_since is None or not self._backlog():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
            docs = [self._pending.popleft() for _ in range(len(self._pending))]
            entries = self._entries(docs)
            if self._down_since is not None or self._backlog():
                self._to_disk(entries)
                if self._drain():
                    backoff.succeeded()
                else:  # the broker is still away
                    self._wake.wait(timeout=backoff.next_delay(BrokerAway()))
            else:
                for start in range(0, len(entries), self._batch):
                    if not self._send(entries[start : start + self._batch]):
                        self._to_disk(entries[start + self._batch :])
                        break
            self._count_sent(len(docs))
            if self._closing and not self._pending and not self._backlog():
                return
            if self._closing and self._down_since is not None:
                return  # close() gave the broker its time; what is left stays on disk

    def _backlog(self) -> int:
        return len(self._retrying) + (len(self._disk) if self._disk is not None else 0)

    def _count_sent(self, n: int) -> None:
        with self._sent_cond:
            self._sent += n
            self._sent_cond.notify_all()

    def _entries(self, docs: list[tuple[Any, Any]]) -> list[tuple[int, dict[bytes, Any]]]:
        entries = []
        for name, doc in docs:
            entry = self._entry(name, doc)
            if entry is not None:
                entries.append(entry)
        return entries

    def _send(self, entries: list[tuple[int, dict[bytes, Any]]]) -> bool:
        """XADD ``entries`` in one transaction; False (they wait) if the broker is away."""
        import redis

        if not entries:
            return True
        pipe = self._redis.pipeline(transaction=True)
        for shard, fields in entries:
            pipe.xadd(self.settings.stream(shard), fields, maxlen=self._maxlen, approximate=True)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._went_down(exc)
            self._retrying = list(entries) + self._retrying
            return False
        except redis.RedisError as exc:  # answered but refused (e.g. out of memory): lost
            self.unsendable += len(entries)
            logger.error("the broker refused %d document(s): %s", len(entries), exc)
        return True

    def _entry(self, name: Any, doc: Any) -> tuple[int, dict[bytes, Any]] | None:
        """The shard and fields of one document's stream entry; None if it cannot be sent.

        Decided once: an entry retried after an outage keeps its shard and its count
        (by which a worker recognises an entry it already has).
        """
        try:
            run = self._run_uid(name, doc)
            payload = codec.encode(doc)
        except Exception as exc:
            self.unsendable += 1
            logger.error(
                "could not send a %r document to the broker: %s: %s", name, type(exc).__name__, exc
            )
            return None
        shard = self._shard_of_run.get(run, 0) if run else 0
        if name == "stop" and run:
            self._forget(run)
        self._count += 1
        fields = {
            codec.NAME: str(name),
            codec.DOC: payload,
            codec.RUN: run or "",
            codec.SOURCE: self._source,
            codec.COUNT: self._count,
        }
        return shard, fields

    def _run_uid(self, name: Any, doc: Any) -> str | None:
        """The uid of the run ``doc`` belongs to (noting new runs, descriptors, resources)."""
        if not isinstance(doc, dict):
            return None
        if name == "start":
            run = str(doc.get("uid"))
            self._shard_of_run[run] = self._next_shard
            self._next_shard = (self._next_shard + 1) % self.settings.shards
            return run
        if name in RUN_KEYS:
            run = doc.get(RUN_KEYS[name])
            if isinstance(run, str) and "uid" in doc:
                self._run_of[str(doc["uid"])] = run
            return run if isinstance(run, str) else None
        parent = doc.get(PARENT_KEYS.get(name, ""))
        if name == "datum_page" or name == "datum":
            parent = parent or str(doc.get("datum_id", "")).partition("/")[0]
        return self._run_of.get(parent) if isinstance(parent, str) else None

    def _forget(self, run: str) -> None:
        self._shard_of_run.pop(run, None)
        for key in [k for k, v in self._run_of.items() if v == run]:
            del self._run_of[key]

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error(
                "lost the broker at %s (%s: %s); documents wait on local disk and are sent "
                "when it is back, the scan goes on",
                self.settings.shown_uri,
                type(exc).__name__,
                exc,
            )

    def _to_disk(self, entries: list[tuple[int, dict[bytes, Any]]]) -> None:
        """Queue encoded entries on local disk (bytes: nothing but ours is pickled there)."""
        if not entries:
            return
        if self._disk is None:
            self._disk = DiskQueue(self._spool_dir, prefix="broker")
        for entry in entries:
            try:
                self._disk.put(entry)
                self.buffered_total += 1
            except OSError as exc:
                self.unsendable += 1
                logger.error("could not keep a document on local disk: %s", exc)

    def _drain(self) -> bool:
        """Send what waits (the retried chunk, then disk); False while the broker is away."""
        import redis

        try:
            self._redis.ping()
        except (redis.RedisError, OSError):
            return False
        while self._backlog():
            chunk = self._retrying or self._disk.take(self._batch)
            self._retrying = []
            if not self._send(chunk):
                return False
        logger.warning(
            "the broker at %s is back after %.0f s; the documents kept meanwhile are sent",
            self.settings.shown_uri,
            time.monotonic() - self._down_since,
        )
        self._down_since = None
        return True

    # -- the user's side ----------------------------------------------------

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every document taken so far is on the broker; False on timeout."""
        target = self._accepted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._sent_cond:
            while self._sent < target or self._backlog():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sent_cond.wait(timeout=min(left, 0.1))
                self._wake.set()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.settings.shown_uri,
            "pending": len(self._pending),
            "accepted": self._accepted,
            "on_disk": self._backlog(),
            "buffered": self.buffered_total,
            "unsendable": self.unsendable,
            "broker_down_for_s": (
                round(time.monotonic() - self._down_since, 1) if self._down_since else 0.0
            ),
        }

    def close(self, timeout: float = 30.0) -> bool:
        """Send what waits (for at most ``timeout`` s) and stop."""
        if self._closed:
            return True
        flushed = self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._closed = True
        atexit.unregister(self.close)
        if self._backlog():
            logger.error(
                "BrokerPublisher closed with %d document(s) not sent: the broker at %s is away",
                self._backlog(),
                self.settings.shown_uri,
            )
        if self._disk is not None:
            self._disk.close()
        return flushed

    def __enter__(self) -> BrokerPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
