"""The front door: how documents leave the RunEngine's thread.

:class:`FrontDoor` is what ``SmartLab`` (documents to its worker) and
``BrokerPublisher`` (documents to a Redis broker) share. On the RunEngine
thread it does O(1) work per document and never raises: it appends the
document to a bounded deque and wakes the feeder thread. The feeder thread
hands what has accumulated to a :class:`Courier` every few milliseconds, so the
far side sees larger batches exactly when the scan is fast.

Two things can make documents wait, each on local disk
(:class:`~smartlab_plugins.spool.DiskQueue`), in order:

behind
    More than ``max_pending`` documents wait in memory. With
    ``backpressure="spill"`` (default) the rest wait on disk and are sent once
    the feeder catches up; with ``"drop"`` events and datums are dropped and
    counted against their run, never the documents that open or close a run or
    a stream.
away
    The courier raises :class:`Away` (a broker that does not answer): what it
    was given waits on disk, already prepared, and is sent again, first, with
    backoff, once the far side answers.

The feeder thread never dies: whatever one round raises is logged and its
documents counted as unsendable, and the next round goes on. :meth:`close`
gives everything its time and returns False, saying what is still pending,
when time runs out.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from smartlab_plugins.protocol import check_backpressure
from smartlab_plugins.retry import Backoff
from smartlab_plugins.run_index import RunIndex, short_uid
from smartlab_plugins.spool import DiskQueue

logger = logging.getLogger(__name__)

#: Documents that are never dropped: losing one would lose a whole run or stream.
ESSENTIAL = frozenset({"start", "descriptor", "stop", "resource", "stream_resource"})
#: Documents held in memory before ``backpressure`` applies, by default.
MAX_PENDING = 10_000
#: Shortest time between two rounds of the feeder (s), by default.
LINGER_S = 0.02
#: Longest wait between tries while the far side is away.
AWAY_RETRY_MAX_S = 5.0

Doc = tuple[Any, Any]


class Away(ConnectionError):
    """The far side did not take what it was given now; it waits on disk and is sent again."""


class Courier(Protocol):
    """Where a front door's documents go: a worker's channel, or a broker.

    Called on the feeder thread only, one call at a time.
    """

    #: The far side as messages name it ("SmartLab's worker", "the broker at ...").
    label: str
    #: Documents :meth:`send` left out because they cannot be sent (each logged).
    refused: int

    def prepare(self, docs: list[Doc], dropped: dict[str, int]) -> list[Any]:
        """Turn documents into what :meth:`send` takes; each item picklable, decided once.

        ``dropped`` counts the events dropped so far per run (``backpressure="drop"``).
        A document that cannot be sent is left out, logged and counted in :attr:`refused`.
        """
        ...

    def send(self, items: list[Any]) -> None:
        """Deliver ``items``; raise :class:`Away` if the far side did not take them now.

        A document that cannot be sent is left out, logged and counted in
        :attr:`refused`; any other exception costs the round it was in.
        """
        ...

    def settle(self, timeout: float) -> bool:
        """Wait until the far side has done its part with what it was sent (flush)."""
        ...

    def finish(self, timeout: float) -> bool:
        """Let the far side finish and let it go (close); False if it did not in time."""
        ...


class FrontDoor:
    """A RunEngine callback that hands documents to a :class:`Courier` on its own thread.

    Parameters
    ----------
    courier
        Where the documents go.
    max_pending
        Documents held in memory; beyond, ``backpressure`` applies.
    backpressure
        ``"spill"``: beyond ``max_pending``, documents wait on local disk, none is
        lost. ``"drop"``: events and datums are dropped and counted.
    linger
        Shortest time between two rounds (s): documents that come sooner wait and go
        together, so there are at most ``1 / linger`` rounds a second however fast the
        scan; a document after a quiet spell goes at once.
    spool_dir
        Where documents wait on local disk (a file per reason, created when needed).
    batch
        Most items handed to the courier at once.
    """

    def __init__(
        self,
        courier: Courier,
        *,
        max_pending: int = MAX_PENDING,
        backpressure: str = "spill",
        linger: float = LINGER_S,
        spool_dir: str | Path,
        batch: int = 500,
    ) -> None:
        check_backpressure(backpressure)
        self._courier = courier
        self._max_pending = max_pending
        self._backpressure = backpressure
        self._linger = linger
        self._spool_dir = Path(spool_dir)
        self._batch = batch
        self._pending: deque[Doc] = deque()
        self._wake = threading.Event()
        # behind: documents beyond max_pending (the RunEngine thread puts, the feeder takes)
        self._behind: DiskQueue | None = None
        self._behind_lock = threading.Lock()
        self._spilling = False
        # away: prepared items the courier could not deliver (the feeder thread only)
        self._away: DiskQueue | None = None
        self._retrying: list[Any] = []  # the chunk that failed last, sent again first
        self._away_since: float | None = None
        self._handled_cond = threading.Condition()
        self._accepted = 0
        self._handled = 0
        self._runs = RunIndex()
        self._dropped: dict[Any, int] = {}
        self.dropped_total = 0
        self.spilled_total = 0
        self.kept_while_away = 0
        self._unsendable = 0
        self._closing = False
        self._closed = False
        self._feeder = threading.Thread(target=self._feed, name="smartlab-feeder", daemon=True)
        self._feeder.start()
        atexit.register(self.close)

    # -- the RunEngine side: O(1), never raises ------------------------------

    def __call__(self, name: Any, doc: Any) -> None:
        """Take a document from the RunEngine (or anywhere); never raises."""
        try:
            if self._closed:
                return
            essential = isinstance(name, str) and name in ESSENTIAL
            if self._spilling or (len(self._pending) >= self._max_pending and not essential):
                if self._backpressure == "drop" and not essential:
                    self._drop(name, doc)
                    return
                self._to_disk(name, doc)
            else:
                self._pending.append((name, doc))
            if essential:
                self._note_essential(name, doc)
            self._accepted += 1
            if not self._wake.is_set():
                self._wake.set()
        except Exception:  # an unhashable name or similar: the far side reports documents, not us
            self._unsendable += 1

    def _note_essential(self, name: str, doc: Any) -> None:
        run = self._runs.note(name, doc)
        if name != "stop" or run is None:
            return
        self._runs.forget(run)
        if self._dropped.get(run):
            logger.warning(
                "SmartLab could not keep up: %d event(s) of run %s were not sent to %s "
                "(more than max_pending=%d documents waiting)",
                self._dropped[run],
                short_uid(run),
                self._courier.label,
                self._max_pending,
            )

    def _to_disk(self, name: Any, doc: Any) -> None:
        """Queue a document on disk behind those in memory (order is kept: once one
        document is on disk, all are, until the feeder has caught up)."""
        with self._behind_lock:
            if self._behind is None:
                self._behind = DiskQueue(self._spool_dir)
            if not self._spilling:
                self._spilling = True
                logger.warning(
                    "%s is behind (%d documents waiting): further documents wait on local "
                    "disk, none is dropped",
                    self._courier.label,
                    len(self._pending),
                )
            self._behind.put((name, doc))
            self.spilled_total += 1

    def _drop(self, name: Any, doc: Any) -> None:
        self.dropped_total += 1
        run = self._runs.run_of(name, doc)
        self._dropped[run] = self._dropped.get(run, 0) + 1

    # -- the feeder thread ---------------------------------------------------

    def _feed(self) -> None:
        """The feeder thread: send what waits, for as long as the session lasts."""
        backoff = Backoff(initial=0.1, maximum=AWAY_RETRY_MAX_S, transient=lambda exc: True)
        last_round = 0.0
        while not self._closed:
            away = self._away_since is not None
            if not self._spilling and not away:  # documents on disk need no wake
                self._wake.wait()
            if self._linger and not self._closing and not away:
                wait = last_round + self._linger - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            last_round = time.monotonic()
            self._wake.clear()
            docs: list[Doc] = []
            try:
                docs = [self._pending.popleft() for _ in range(len(self._pending))]
                if not docs and not away:
                    docs = self._from_disk()
                self._send_round(docs, backoff)
            except Exception as exc:
                self._unsendable += len(docs)
                logger.error(
                    "SmartLab could not send %d document(s) to %s (%s: %s); the session goes on",
                    len(docs),
                    self._courier.label,
                    type(exc).__name__,
                    exc,
                )
            with self._handled_cond:
                self._handled += len(docs)
                self._handled_cond.notify_all()
            if self._closing and (self._away_since is not None or not self.waiting):
                return  # close() gave the far side its time; what is left is reported

    def _send_round(self, docs: list[Doc], backoff: Backoff) -> None:
        items = self._courier.prepare(docs, {k: v for k, v in self._dropped.copy().items() if k})
        if self._away_since is not None:
            self._keep_while_away(items)
            if self._send_kept():
                backoff.succeeded()
            elif not self._closing:
                self._wake.wait(timeout=backoff.next_delay(Away()))
            return
        for start in range(0, len(items), self._batch):
            try:
                self._courier.send(items[start : start + self._batch])
            except Away as exc:
                self._went_away(exc)
                self._keep_while_away(items[start:])
                return

    def _from_disk(self) -> list[Doc]:
        """The oldest documents waiting on disk because the feeder was behind."""
        with self._behind_lock:
            if not self._spilling:
                return []
            docs = self._behind.take(self._max_pending)
            if not len(self._behind):
                self._spilling = False
                logger.info("%s has caught up: no document waits on disk", self._courier.label)
            return docs

    def _went_away(self, exc: Away) -> None:
        self._away_since = time.monotonic()
        logger.error(
            "lost %s (%s); documents wait on local disk and are sent when it is back, "
            "the scan goes on",
            self._courier.label,
            exc,
        )

    def _keep_while_away(self, items: list[Any]) -> None:
        if not items:
            return
        if self._away is None:
            self._away = DiskQueue(self._spool_dir, prefix="away")
        for item in items:
            try:
                self._away.put(item)
                self.kept_while_away += 1
            except OSError as exc:
                self._unsendable += 1
                logger.error("could not keep a document on local disk: %s", exc)

    def _send_kept(self) -> bool:
        """Send what waited while the far side was away; False while it still is."""
        while self._retrying or (self._away is not None and len(self._away)):
            chunk = self._retrying or self._away.take(self._batch)
            self._retrying = chunk
            try:
                self._courier.send(chunk)
            except Away:
                return False
            self._retrying = []
        logger.warning(
            "%s is back after %.0f s; the documents kept meanwhile are sent",
            self._courier.label,
            time.monotonic() - self._away_since,
        )
        self._away_since = None
        return True

    # -- the user's side -----------------------------------------------------

    @property
    def in_memory(self) -> int:
        """Documents waiting in memory now (at most ``max_pending`` events)."""
        return len(self._pending)

    @property
    def unsendable(self) -> int:
        """Documents that could not be sent (each logged): refused, or lost with their round."""
        return self._unsendable + self._courier.refused

    @property
    def waiting(self) -> dict[str, int]:
        """What has not reached the far side yet, by where it waits (empty when nothing)."""
        with self._behind_lock:
            behind = len(self._behind) if self._behind is not None else 0
        away = len(self._retrying) + (len(self._away) if self._away is not None else 0)
        counts = {"in memory": len(self._pending), "on disk, behind": behind}
        counts["on disk, far side away"] = away
        return {where: n for where, n in counts.items() if n}

    def door_status(self) -> dict[str, Any]:
        """The front door's counts, for :meth:`status`."""
        waiting = self.waiting
        return {
            "pending": len(self._pending),
            "accepted": self._accepted,
            "shipped": self._handled,
            "dropped": self.dropped_total,
            "spilled": self.spilled_total,
            "on_disk": waiting.get("on disk, behind", 0) + waiting.get("on disk, far side away", 0),
            "kept_while_away": self.kept_while_away,
            "unsendable": self.unsendable,
            "away_for_s": (
                round(time.monotonic() - self._away_since, 1) if self._away_since else 0.0
            ),
        }

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every document taken so far has reached the far side and it has
        done its part (analysed and published, or on the broker); False on timeout."""
        target = self._accepted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._handled_cond:
            while self._handled < target or self._away_since is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._handled_cond.wait(timeout=min(left, 0.1))
                self._wake.set()
        return self._courier.settle(max(0.1, deadline - time.monotonic()))

    def close(self, timeout: float = 60.0) -> bool:
        """Send what waits and let the far side finish, within about ``timeout`` s.

        Returns True when everything taken reached the far side and it finished;
        otherwise False, after logging what is still pending and where.
        """
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        self._feeder.join(max(0.1, deadline - time.monotonic()))
        self._closed = True
        atexit.unregister(self.close)
        waiting = self.waiting
        if waiting:
            logger.error(
                "SmartLab closed with documents not sent to %s: %s%s",
                self._courier.label,
                ", ".join(f"{n} {where}" for where, n in waiting.items()),
                "; it is away" if self._away_since is not None else " (time ran out)",
            )
        # the far side's own finishing gets its share even when sending took the time
        finished = self._courier.finish(max(deadline - time.monotonic(), min(timeout, 10.0)))
        with self._behind_lock:
            for queue in (self._behind, self._away):
                if queue is not None:
                    queue.close()
        return finished and not waiting

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
