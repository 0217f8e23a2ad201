"""``SmartLab``: the callback a RunEngine subscribes.

On the RunEngine thread it does O(1) work per document: it appends the
document to a bounded deque and returns. A feeder thread ships what has
accumulated to the analysis worker (a child process by default) every few
milliseconds, so the worker sees larger batches exactly when the scan is
fast.

When analysis falls behind and the deque is full, the ``backpressure``
policy decides:

``"spill"`` (default)
    Documents wait on local disk (:class:`~smartlab_plugins.spool.DiskQueue`)
    and are shipped, in order, once the worker catches up: nothing is lost,
    memory stays bounded, and the scan pays only for writing them. In the
    worker, a plugin's full lane makes the worker wait, for at most
    ``plugin_timeout``; a plugin that stays that far behind is disabled for
    the run (recorded), so the others catch up.
``"drop"``
    Events and datums beyond ``max_pending`` are dropped, never the documents
    that open or close a run or a stream; in the worker, batches a plugin
    has no room for are skipped for it. Every drop and skip is counted,
    logged and recorded in the published results, for monitoring.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from smartlab_plugins import protocol, settings
from smartlab_plugins.connection import connect
from smartlab_plugins.manager import PluginManager, plugin_reference
from smartlab_plugins.protocol import Shipment, WorkerConfig
from smartlab_plugins.runner import ProcessHost, ThreadHost, WorkerError
from smartlab_plugins.spool import DiskQueue

logger = logging.getLogger(__name__)

#: Documents that are never dropped: losing one would lose a whole run or stream.
ESSENTIAL = frozenset({"start", "descriptor", "stop", "resource", "stream_resource"})
ISOLATIONS = {"process": ProcessHost, "thread": ThreadHost}
BACKPRESSURE = ("spill", "drop")


class SmartLab:
    """Live analysis of a RunEngine's documents, published to Tiled.

    ``RE.subscribe(SmartLab())`` is the whole set-up in a session: with no
    arguments it publishes to ``SMARTLAB_TILED_URI`` with ``SMARTLAB_API_KEY``
    and runs every installed plugin. Calling it with any document, however
    malformed, never raises; :meth:`close` (or leaving a ``with`` block)
    finishes writing.

    Parameters
    ----------
    tiled_uri, api_key
        The Tiled server and its key; default from the environment.
    plugins
        Names of the plugins to enable for this session; default all.
    raw
        Also write the raw run to Tiled with ``TiledWriter`` (default True).
    isolation
        ``"process"`` (default) runs analysis and publishing in a child process;
        ``"thread"`` in a thread of this one (costs scan speed; for plugins that
        cannot be pickled, and for tests).
    max_pending
        Documents held in memory for the worker; beyond, ``backpressure`` applies.
    backpressure
        ``"spill"`` (default): beyond ``max_pending``, documents wait on local disk,
        nothing is lost. ``"drop"``: events are dropped and counted.
    max_batch
        Largest batch of events handed to a plugin at once.
    max_failures
        Failures after which a plugin is disabled for the rest of a run.
    plugin_timeout
        Seconds one call of a plugin may take; a plugin that hangs longer is disabled
        for the rest of the run, and its failure recorded.
    max_growth_mb
        Memory growth (MB) across one plugin's calls in a run beyond which it is
        disabled for the run, as leaking.
    lane_capacity
        Batches that may wait for one plugin; what a plugin too slow to keep up
        cannot take is skipped for it (and recorded), never for the others.
    linger
        Seconds the feeder waits after the first new document, to ship several together.
    spool_dir
        Where results wait on local disk while Tiled is unreachable (and survive a
        killed worker); default ``SMARTLAB_SPOOL_DIR``, else ``spool`` in the data folder.
    compute
        A Dask scheduler's address (``tcp://host:8786``), or ``"local"`` / ``"local:N"``
        for a local cluster of N processes, to analyse stateless plugins' batches on
        (:mod:`smartlab_plugins.compute`); default ``SMARTLAB_COMPUTE``, else none: all
        analysis in the worker.
    data_roots
        Folders under which detector files named by the documents may be read (paths
        resolved first: symlinks and ``..`` cannot leave them); default
        ``SMARTLAB_DATA_ROOTS``, else any folder but a Tiled server's own: the documents
        come from this session's RunEngine. See ``docs/reliability.md``.
    max_event_bytes
        Largest declared size of one event's file-backed data; larger is refused unread
        (default 256 MiB).
    """

    def __init__(
        self,
        tiled_uri: str | None = None,
        api_key: str | None = None,
        *,
        plugins: Iterable[str] | None = None,
        raw: bool = True,
        isolation: str = "process",
        max_pending: int = 10_000,
        backpressure: str = "spill",
        max_batch: int = 256,
        max_failures: int = 3,
        plugin_timeout: float = 30.0,
        max_growth_mb: float = 2048.0,
        lane_capacity: int = 64,
        linger: float = 0.02,
        spool_dir: str | Path | None = None,
        compute: str | None = None,
        data_roots: Iterable[str | Path] | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {sorted(ISOLATIONS)}, got {isolation!r}")
        if backpressure not in BACKPRESSURE:
            raise ValueError(f"backpressure must be one of {BACKPRESSURE}, got {backpressure!r}")
        self.tiled_uri = tiled_uri or settings.tiled_uri()
        api_key = api_key or settings.api_key()
        connect(self.tiled_uri, api_key)
        self.plugins = PluginManager()
        enabled = self.plugins.resolve(plugins) if plugins is not None else None
        config = WorkerConfig(
            tiled_uri=self.tiled_uri,
            api_key=api_key,
            enabled=enabled,
            raw=raw,
            max_batch=max_batch,
            max_failures=max_failures,
            plugin_timeout=plugin_timeout,
            max_growth_mb=max_growth_mb,
            lane_capacity=lane_capacity,
            backpressure=backpressure,
            log_level=logging.getLogger("smartlab_plugins").getEffectiveLevel(),
            spool_dir=str(spool_dir or settings.spool_dir()),
            compute=compute or settings.compute(),
            data_roots=(
                [str(root) for root in data_roots]
                if data_roots is not None
                else settings.data_roots()
            ),
            max_event_bytes=max_event_bytes,
        )
        self._spill_dir = Path(config.spool_dir)
        self._backpressure = backpressure
        self._spill: DiskQueue | None = None
        self._spill_lock = threading.Lock()
        self._spilling = False
        self.spilled_total = 0
        self._host = ISOLATIONS[isolation](config)
        self._max_pending = max_pending
        self._linger = linger
        self._pending: deque[tuple[Any, Any]] = deque()
        self._wake = threading.Event()
        self._shipped_cond = threading.Condition()
        self._accepted = 0
        self._shipped = 0
        self._run_of: dict[Any, Any] = {}
        self._dropped: dict[Any, int] = {}
        self.dropped_total = 0
        self.unsendable = 0
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
                if self._backpressure == "drop":
                    self._drop(doc)
                    return
                self._to_disk(name, doc)
            else:
                self._pending.append((name, doc))
            if essential:
                self._note_essential(name, doc)
            self._accepted += 1
            if not self._wake.is_set():
                self._wake.set()
        except Exception:  # an unhashable name or similar: the worker reports documents, not us
            self.unsendable += 1

    def _note_essential(self, name: str, doc: Any) -> None:
        try:
            if name in ("descriptor", "resource"):
                self._run_of[doc["uid"]] = doc["run_start"]
            elif name == "stop":
                run = doc["run_start"]
                for key in [k for k, v in self._run_of.items() if v == run]:
                    del self._run_of[key]
                if self._dropped.get(run):
                    logger.warning(
                        "SmartLab could not keep up: %d event(s) of run %s were not analysed "
                        "(more than max_pending=%d documents waiting)",
                        self._dropped[run],
                        str(run)[:8],
                        self._max_pending,
                    )
        except Exception:  # malformed: the worker will say what is wrong with it
            pass

    def _to_disk(self, name: str, doc: Any) -> None:
        """Queue a document on disk behind those in memory (order is kept: once one
        document is on disk, all are, until the feeder has caught up)."""
        with self._spill_lock:
            if self._spill is None:
                self._spill = DiskQueue(self._spill_dir)
            if not self._spilling:
                self._spilling = True
                logger.warning(
                    "SmartLab analysis is behind (%d documents waiting): further documents "
                    "wait on local disk, none is dropped",
                    len(self._pending),
                )
            self._spill.put((name, doc))
            self.spilled_total += 1

    def _from_disk(self) -> list[tuple[Any, Any]]:
        """The oldest documents waiting on disk (call with memory drained)."""
        with self._spill_lock:
            if not self._spilling:
                return []
            docs = self._spill.take(self._max_pending)
            if not len(self._spill):
                self._spilling = False
                logger.info("SmartLab analysis has caught up: no document waits on disk")
            return docs

    def _drop(self, doc: Any) -> None:
        self.dropped_total += 1
        try:
            run = self._run_of.get(doc.get("descriptor") or doc.get("resource"))
        except Exception:  # malformed: counted against no run
            run = None
        self._dropped[run] = self._dropped.get(run, 0) + 1

    # -- the feeder thread --------------------------------------------------

    def _feed(self) -> None:
        """The feeder thread: ship what waits, for as long as the session lasts.

        It never dies: whatever one round of documents raises is logged, the
        documents are counted as unsendable, and the next round goes on.
        """
        while True:
            if not self._spilling:  # documents on disk: no need to wait for a new one
                self._wake.wait()
            if self._linger and not self._closing:
                time.sleep(self._linger)
            self._wake.clear()
            docs: list[tuple[Any, Any]] = []
            try:
                docs = [self._pending.popleft() for _ in range(len(self._pending))]
                if not docs and self._spilling:
                    docs = self._from_disk()
                if docs:
                    self._ship(docs)
            except Exception as exc:
                self.unsendable += len(docs)
                logger.error(
                    "SmartLab could not send %d document(s) to its worker (%s: %s); the "
                    "session goes on",
                    len(docs),
                    type(exc).__name__,
                    exc,
                )
            with self._shipped_cond:
                self._shipped += len(docs)
                self._shipped_cond.notify_all()
            if self._closing and not self._pending and not self._spilling:
                return

    def _ship(self, docs: list[tuple[Any, Any]]) -> None:
        shipment = Shipment(docs, dropped={k: v for k, v in self._dropped.copy().items() if k})
        try:
            self._host.ship(shipment)
        except (WorkerError, OSError, EOFError) as exc:
            self.unsendable += len(docs)
            logger.error("SmartLab could not send %d document(s) to its worker: %s", len(docs), exc)
        except Exception:  # a document pickle refuses: a lambda in it, metadata nested too deep
            self._ship_one_by_one(shipment)

    def _ship_one_by_one(self, shipment: Shipment) -> None:
        sendable = []
        for name, doc in shipment.docs:
            try:
                pickle.dumps((name, doc))
                sendable.append((name, doc))
            except Exception as exc:
                self.unsendable += 1
                logger.error(
                    "SmartLab could not send a %r document%s to its worker: %s: %s; %s",
                    name,
                    _of_run(name, doc),
                    type(exc).__name__,
                    str(exc)[:200],
                    "its run is not analysed" if name == "start" else "it is not analysed",
                )
        if sendable:
            self._host.ship(Shipment(sendable, shipment.dropped))

    # -- the user's side ----------------------------------------------------

    @property
    def in_memory(self) -> int:
        """Documents waiting for the worker in memory now (at most ``max_pending`` events)."""
        return len(self._pending)

    @property
    def enabled(self) -> list[str]:
        return self._host.request(protocol.StatusRequest())["enabled"]

    def enable(self, name: str) -> None:
        """Enable a plugin for the following runs of this session."""
        self._host.request(protocol.Enable(self.plugins.resolve([name])[0]))

    def disable(self, name: str) -> None:
        """Disable a plugin for the following runs of this session."""
        self._host.request(protocol.Disable(self.plugins.resolve([name])[0]))

    def register(self, plugin: object) -> str:
        """Register a plugin object or module in this session; returns its name."""
        name = self.plugins.register(plugin)
        try:
            self._host.request(protocol.Register(plugin_reference(plugin)))
        except Exception:
            self.plugins.unregister(name)
            raise
        return name

    def add_live_view(self, view: Any) -> None:
        """Send a live view (:mod:`smartlab_plugins.live`) the results of its plugin as they come.

        The worker forwards results beside publishing them; the view only queues
        them, and draws on the GUI thread, so the RunEngine never waits for a plot.
        """
        self._host.result_callbacks.append(view)
        self._update_live()

    def remove_live_view(self, view: Any) -> None:
        self._host.result_callbacks.remove(view)
        self._update_live()

    def _update_live(self) -> None:
        wanted: dict[str, dict[str, bool]] = {}
        for view in self._host.result_callbacks:
            entry = wanted.setdefault(view.plugin, {"arrays": False, "inputs": False})
            entry["arrays"] |= getattr(view, "wants_arrays", False)
            entry["inputs"] |= getattr(view, "wants_inputs", False)
        self._host.request(protocol.SetLive(wanted))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every document taken so far is analysed and published."""
        target = self._accepted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._shipped_cond:
            while self._shipped < target:
                if not self._shipped_cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    return False
        return bool(
            self._host.request(
                protocol.Flush(max(0.1, deadline - time.monotonic())), timeout=timeout + 10
            )
        )

    def status(self) -> dict[str, Any]:
        """Queue depth, counts and the worker's state, for a quick look."""
        status: dict[str, Any] = {
            "pending": len(self._pending),
            "accepted": self._accepted,
            "shipped": self._shipped,
            "dropped": self.dropped_total,
            "spilled": self.spilled_total,
            "on_disk": len(self._spill) if self._spill is not None else 0,
            "unsendable": self.unsendable,
            "worker_alive": self._host.alive,
            "worker_pid": getattr(self._host, "pid", None),  # None when the worker is a thread
            "runs_finished": len(self._host.summaries),
        }
        if self._host.alive:
            try:
                status["worker"] = self._host.request(protocol.StatusRequest(), timeout=10)
            except WorkerError as exc:  # it died while we asked
                status["worker_alive"], status["worker"] = False, str(exc)
        return status

    @property
    def run_summaries(self) -> list[dict[str, Any]]:
        """One summary per finished run: events analysed, errors, drops, per plugin."""
        return list(self._host.summaries)

    def close(self, timeout: float = 60.0) -> bool:
        """Ship what is pending, let the worker finish writing, and stop it."""
        if self._closed:
            return True
        self._closing = True
        self._wake.set()
        self._feeder.join(timeout)
        self._closed = True
        if self._spill is not None:
            with self._spill_lock:
                if len(self._spill):
                    logger.error(
                        "SmartLab closed with %d document(s) still waiting on disk: not analysed",
                        len(self._spill),
                    )
                self._spill.close()
        atexit.unregister(self.close)
        return self._host.close(timeout)

    def __enter__(self) -> SmartLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _of_run(name: Any, doc: Any) -> str:
    """`` of run <uid>`` for a document that names its run plainly, else ``""``."""
    try:
        run = doc["uid"] if name == "start" else doc["run_start"]
        return f" of run {str(run)[:8]}"
    except Exception:
        return ""
