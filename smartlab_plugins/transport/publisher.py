"""``BrokerPublisher``: the RunEngine's documents onto Redis streams.

It is a :class:`~smartlab_plugins.front_door.FrontDoor`, as
:class:`~smartlab_plugins.callbacks.smartlab.SmartLab` is, whose courier
encodes the documents (:mod:`~smartlab_plugins.transport.codec`) and adds
them to the run's shard stream with ``XADD``, many per round trip, each round
in one ``MULTI``/``EXEC`` so it lands whole or not at all.

A run's shard is chosen at its start document (round-robin over the shards)
and every later document of the run follows it, so one stream holds the whole
run in order. When the broker goes away mid-run the documents wait on local
disk, encoded and in order, and are sent once it answers again (the front
door's "away"); the scan never waits for it and never fails for it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from smartlab_plugins import settings as smartlab_settings
from smartlab_plugins.front_door import Away, Doc, FrontDoor
from smartlab_plugins.run_index import RunIndex
from smartlab_plugins.transport import codec
from smartlab_plugins.transport.settings import BrokerSettings, connect

logger = logging.getLogger(__name__)

#: An encoded document: its shard and its stream entry's fields.
Entry = tuple[int, dict[bytes, Any]]


class BrokerCourier:
    """The front door's courier to a Redis broker: documents as stream entries."""

    def __init__(self, settings: BrokerSettings, maxlen: int) -> None:
        self.settings = settings
        self.label = f"the broker at {settings.shown_uri}"
        self.refused = 0
        self._redis = connect(settings)
        self._maxlen = maxlen
        self._source = uuid.uuid4().hex
        self._count = 0
        self._next_shard = 0
        self._shard_of_run: dict[str, int] = {}
        self._runs = RunIndex()

    def prepare(self, docs: list[Doc], dropped: dict[str, int]) -> list[Entry]:
        """Each document's entry, decided once: one retried after an outage keeps its
        shard and its count (by which a worker recognises an entry it already has)."""
        entries = []
        for name, doc in docs:
            try:
                run = self._runs.note(name, doc)
                payload = codec.encode(doc)
            except Exception as exc:
                self.refused += 1
                logger.error(
                    "could not send a %r document to the broker: %s: %s",
                    name,
                    type(exc).__name__,
                    exc,
                )
                continue
            entries.append((self._shard(name, run), self._fields(name, run, payload)))
        return entries

    def _shard(self, name: Any, run: str | None) -> int:
        """The run's shard: chosen round-robin at its start, forgotten at its stop."""
        if not run:
            return 0
        if name == "start":
            self._shard_of_run[run] = self._next_shard
            self._next_shard = (self._next_shard + 1) % self.settings.shards
        shard = self._shard_of_run.get(run, 0)
        if name == "stop":
            self._shard_of_run.pop(run, None)
            self._runs.forget(run)
        return shard

    def _fields(self, name: Any, run: str | None, payload: bytes) -> dict[bytes, Any]:
        self._count += 1
        return {
            codec.NAME: str(name),
            codec.DOC: payload,
            codec.RUN: run or "",
            codec.SOURCE: self._source,
            codec.COUNT: self._count,
        }

    def send(self, items: list[Entry]) -> None:
        """XADD ``items`` in one transaction; :class:`Away` if the broker did not answer."""
        import redis

        if not items:
            return
        pipe = self._redis.pipeline(transaction=True)
        for shard, fields in items:
            pipe.xadd(self.settings.stream(shard), fields, maxlen=self._maxlen, approximate=True)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise Away(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:  # answered but refused (e.g. out of memory): lost
            self.refused += len(items)
            logger.error("the broker refused %d document(s): %s", len(items), exc)

    def settle(self, timeout: float) -> bool:
        """Nothing to wait for: what the broker took is on its streams."""
        return True

    def finish(self, timeout: float) -> bool:
        """Let the connection go."""
        self._redis.close()
        return True


class BrokerPublisher(FrontDoor):
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
        Where documents wait while the broker is away or the sender is behind
        (default ``SMARTLAB_SPOOL_DIR``).
    batch
        Most documents sent in one round trip.
    maxlen
        Approximate cap on each shard stream's length, a safety net only: workers trim
        what they have acknowledged.
    max_pending, linger
        As for :class:`~smartlab_plugins.front_door.FrontDoor`.
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
        max_pending: int = 10_000,
        linger: float = 0.0,
    ) -> None:
        self.settings = BrokerSettings.load(uri=uri, shards=shards, prefix=prefix)
        super().__init__(
            BrokerCourier(self.settings, maxlen),
            max_pending=max_pending,
            linger=linger,
            spool_dir=Path(spool_dir or smartlab_settings.spool_dir()),
            batch=batch,
        )

    def status(self) -> dict[str, Any]:
        """Queue depth and counts, and how long the broker has been away (0 if it is not)."""
        return {"broker": self.settings.shown_uri, **self.door_status()}

    def close(self, timeout: float = 30.0) -> bool:
        """Send what waits (for at most about ``timeout`` s) and stop."""
        return super().close(timeout)
