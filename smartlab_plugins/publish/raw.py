"""The raw run to Tiled through bluesky-tiled-plugins' ``TiledWriter``, off the RunEngine."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from smartlab_plugins.publish.held_rows import HeldRows
from smartlab_plugins.retry import Backoff

if TYPE_CHECKING:
    from bluesky_tiled_plugins import TiledWriter

logger = logging.getLogger(__name__)


#: Most events of a stream the raw-run writer keeps before writing them as rows, whatever
#: their age: TiledWriter's default (10,000) held ~140 MB of a beam monitor's rows in the
#: worker before its first write.
RAW_BATCH_SIZE = 1_000
#: Seconds a run's oldest buffered event row waits, at most, before the rows are written.
#: The price of a live raw run: on 2 cores, where the worker competes with the RunEngine,
#: the RunEngine slowdown of `make bench`'s image scan went from 2.09x (rows written only at
#: 1,000 or at the stop) to 2.43x, side by side; TiledWriter extends each image array on
#: every write.
RAW_MAX_DELAY = 0.5
#: ``TiledWriter``'s own batch size, never reached: :class:`HeldRows` writes every batch,
#: so that a batch written again after a failure half way is not written twice.
_NEVER = 2**62


class RawRunWriter:
    """The raw documents of each run to Tiled, via ``TiledWriter``, on a thread of its own.

    ``TiledWriter`` inline on the RunEngine thread costs about 40% of a fast
    scan; here it runs beside the analysis, off the RunEngine's process by
    default. It receives documents already normalized by the batch
    assembler's ``RunNormalizer`` (so they are normalized and validated once,
    not twice). While Tiled is unreachable the document is retried with
    backoff and the next ones wait in memory (up to ``max_pending``); a 5xx
    answer is retried three times. Other failures are logged, rate-limited,
    and never stop the analysis; each is counted, in all (``failures``) and
    per run (:meth:`run_failures`), so the run's analyses and summary say so.

    Event rows are written in batches, so that a reader of ``client[uid]["primary"]``
    sees them during the scan: once :data:`RAW_BATCH_SIZE` of a run are held, or
    once a run's oldest held row has waited ``max_delay`` seconds, even if no more
    documents come.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        max_pending: int = 1_000_000,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        max_delay: float = RAW_MAX_DELAY,
    ) -> None:
        self._client_factory = client_factory
        self._max_delay = max_delay
        self._writer: TiledWriter | None = None
        self._held: HeldRows | None = None
        #: Per run: when its oldest event row not yet written reached the writer (monotonic).
        self._rows_since: dict[str | None, float] = {}
        self._docs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._backoff = Backoff(retry_initial, retry_max, server_error_attempts=3)
        self._giving_up = threading.Event()
        self.failures = 0
        self._run_of_descriptor: dict[str, str] = {}
        self._failures_by_run: dict[str, int] = {}
        self._finished: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="smartlab-raw-writer", daemon=True)
        self._thread.start()

    def put(self, name: str, doc: Any) -> None:
        run_uid = self._note(name, doc)
        try:
            self._docs.put_nowait((name, doc))
        except queue.Full:
            self._count(run_uid)
            logger.error("raw run writer queue full: a %s document was not written to Tiled", name)
            if name == "stop":
                self._finished_event(run_uid).set()

    def run_failures(self, run_uid: str, timeout: float = 0.0) -> tuple[int, bool]:
        """Documents of the run that could not be written, and whether its stop was handled.

        Waits up to ``timeout`` seconds for the writer to reach the run's stop
        document; a count with ``False`` may still grow.
        """
        done = self._finished_event(run_uid).wait(timeout)
        with self._lock:
            failures = self._failures_by_run.get(run_uid, 0)
            if done:
                self._failures_by_run.pop(run_uid, None)
                self._finished.pop(run_uid, None)
        return failures, done

    def _note(self, name: str, doc: Any) -> str | None:
        """The run a document belongs to (remembering descriptors), or None if unknown."""
        try:
            if name == "start":
                return doc["uid"]
            if name == "descriptor":
                self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            if name in ("descriptor", "stop", "stream_resource"):
                return doc["run_start"]
            if name in ("event", "event_page", "stream_datum"):
                return self._run_of_descriptor.get(doc["descriptor"])
        except (KeyError, TypeError):
            pass
        return None

    def _count(self, run_uid: str | None) -> None:
        with self._lock:
            self.failures += 1
            if run_uid is not None:
                self._failures_by_run[run_uid] = self._failures_by_run.get(run_uid, 0) + 1

    def _finished_event(self, run_uid: str | None) -> threading.Event:
        with self._lock:
            return self._finished.setdefault(run_uid, threading.Event())

    def flush(self, timeout: float | None = None) -> bool:
        done = threading.Event()
        self._docs.put(("__barrier__", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> bool:
        flushed = self.flush(timeout)
        if not flushed:
            self._giving_up.set()  # Tiled still away: stop retrying
        self._docs.put(("__exit__", None))
        self._thread.join(timeout=5)
        return flushed

    def _run(self) -> None:
        while True:
            self._write_due_rows()
            try:
                name, doc = self._docs.get(timeout=self._until_due())
            except queue.Empty:
                continue
            if name == "__barrier__":
                doc.set()
                continue
            if name == "__exit__":
                return
            run_uid = self._note(name, doc)
            if name == "stop" and self._held is not None:
                self._write_rows(run_uid)  # the held rows first, each once
            error = self._write(partial(self._write_document, name, doc))
            if error is not None:
                self._failed(f"{name} document", run_uid, error)
            if name in ("event", "event_page") and self._held is not None:
                self._rows_since.setdefault(run_uid, time.monotonic())
                if self._held.count(run_uid) >= RAW_BATCH_SIZE:
                    self._write_rows(run_uid)
            if name == "stop":
                self._rows_since.pop(run_uid, None)
                if self._held is not None:
                    self._held.forget(run_uid)
                self._finished_event(run_uid).set()
                self._forget_descriptors(run_uid)

    def _write_document(self, name: str, doc: Any) -> None:
        if self._writer is None:
            from bluesky_tiled_plugins import TiledWriter

            self._writer = TiledWriter(self._client_factory(), normalizer=None, batch_size=_NEVER)
            self._held = HeldRows(self._writer)
        self._writer(name, doc)

    def _until_due(self) -> float | None:
        """Seconds until a run's buffered rows are due to be written; None if none are held."""
        if not self._rows_since:
            return None
        oldest = min(self._rows_since.values())
        return max(0.0, oldest + self._max_delay - time.monotonic())

    def _write_due_rows(self) -> None:
        """Write the event rows of each run whose oldest buffered row has waited ``max_delay``."""
        now = time.monotonic()
        for run_uid, since in list(self._rows_since.items()):
            if now - since >= self._max_delay:
                self._write_rows(run_uid)

    def _write_rows(self, run_uid: str | None) -> None:
        """Write the run's held event rows now, retrying with backoff; kept if given up on."""
        assert self._held is not None
        self._rows_since.pop(run_uid, None)
        error = self._write(partial(self._held.write, run_uid))
        if error is not None:  # the rows are still held: try again later
            self._rows_since[run_uid] = time.monotonic()
            self._failed("batch of buffered event rows", run_uid, error)

    def _write(self, write: Callable[[], None]) -> Exception | None:
        """Make one write to Tiled, retrying with backoff; the error it was given up on, if any."""
        while True:
            try:
                write()
            except Exception as exc:
                delay = self._backoff.next_delay(exc)
                if delay is not None and not self._giving_up.is_set():
                    if self._backoff.attempts == 1:
                        logger.error(
                            "cannot write the raw run to Tiled (%s: %s); retrying with "
                            "backoff, its documents wait meanwhile",
                            type(exc).__name__,
                            exc,
                        )
                    self._giving_up.wait(delay)
                    continue
                return exc
            self._backoff.succeeded()
            return None

    def _forget_descriptors(self, run_uid: str | None) -> None:
        for uid in [d for d, run in list(self._run_of_descriptor.items()) if run == run_uid]:
            del self._run_of_descriptor[uid]

    def _failed(self, what: str, run_uid: str | None, exc: Exception) -> None:
        self._count(run_uid)
        if self.failures == 1 or self.failures % 100 == 0:
            logger.error(
                "could not write a raw %s to Tiled (%d failures so far): %s: %s",
                what,
                self.failures,
                type(exc).__name__,
                exc,
            )
