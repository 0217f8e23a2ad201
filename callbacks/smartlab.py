"""``SmartLab``: the callback a RunEngine subscribes.

It is a :class:`~smartlab_plugins.front_door.FrontDoor` whose courier is the
analysis worker (a child process by default): on the RunEngine thread it does
O(1) work per document, and a sender thread ships what has accumulated to the
worker every few milliseconds, so the worker sees larger batches exactly when
the scan is fast.

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

import logging
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smartlab_plugins import protocol, settings
from smartlab_plugins.connection import connect
from smartlab_plugins.front_door import LINGER_S, MAX_PENDING, Doc, FrontDoor
from smartlab_plugins.manager import PluginManager, plugin_reference
from smartlab_plugins.protocol import Limits, Shipment, WorkerConfig
from smartlab_plugins.run_index import short_uid
from smartlab_plugins.runner import ProcessHost, ThreadHost, WorkerError, WorkerHost

logger = logging.getLogger(__name__)

ISOLATIONS = {"process": ProcessHost, "thread": ThreadHost}


class WorkerCourier:
    """The front door's courier to SmartLab's worker: one :class:`Shipment` per round."""

    label = "SmartLab's worker"

    def __init__(self, host: WorkerHost) -> None:
        self.host = host
        self.refused = 0

    def prepare(self, docs: list[Doc], dropped: dict[str, int]) -> list[Shipment]:
        """One shipment of ``docs``, with the events dropped so far per run."""
        return [Shipment(docs, dropped=dropped)] if docs else []

    def send(self, items: list[Shipment]) -> None:
        """Ship to the worker (blocks while it is busy reading: its pipe is bounded).

        A document pickle refuses (a lambda in it, metadata nested too deep) costs
        only itself, named in the log and counted in :attr:`refused`; a start
        document that cannot go costs its run, whose later documents the worker
        then refuses as belonging to no run it knows.
        """
        for shipment in items:
            try:
                self.host.ship(shipment)
            except (WorkerError, OSError, EOFError):
                raise
            except Exception:  # pickling failed before anything was written
                self.host.ship(Shipment(self._picklable(shipment.docs), shipment.dropped))

    def _picklable(self, docs: list[Doc]) -> list[Doc]:
        sendable = []
        for name, doc in docs:
            try:
                pickle.dumps((name, doc))
                sendable.append((name, doc))
            except Exception as exc:
                self.refused += 1
                logger.error(
                    "SmartLab could not send a %r document%s to its worker: %s: %s; %s",
                    name,
                    _of_run(name, doc),
                    type(exc).__name__,
                    str(exc)[:200],
                    "its run is not analysed" if name == "start" else "it is not analysed",
                )
        return sendable

    def settle(self, timeout: float) -> bool:
        """Wait until the worker has analysed and published all it was sent."""
        return bool(self.host.request(protocol.Flush(timeout), timeout=timeout + 10))

    def finish(self, timeout: float) -> bool:
        """Let the worker finish publishing and stop; False, said, if it did not in time."""
        try:
            return self.host.close(timeout)
        except WorkerError as exc:
            logger.error(
                "SmartLab's worker did not finish within %.0f s (%s); it was stopped. Results "
                "it had not yet published wait in its journal and are published by the next "
                "SmartLab session on the same spool folder",
                timeout,
                exc,
            )
            return False


class SmartLab(FrontDoor):
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
        Shortest time between two shipments to the worker (s): documents that come
        sooner wait and go together; one after a quiet spell goes at once.
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
        max_pending: int = MAX_PENDING,
        backpressure: str = Limits.backpressure,
        max_batch: int = Limits.max_batch,
        max_failures: int = Limits.max_failures,
        plugin_timeout: float = Limits.plugin_timeout,
        max_growth_mb: float = Limits.max_growth_mb,
        lane_capacity: int = Limits.lane_capacity,
        linger: float = LINGER_S,
        spool_dir: str | Path | None = None,
        compute: str | None = None,
        data_roots: Iterable[str | Path] | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {sorted(ISOLATIONS)}, got {isolation!r}")
        limits = Limits(
            max_batch=max_batch,
            max_failures=max_failures,
            plugin_timeout=plugin_timeout,
            max_growth_mb=max_growth_mb,
            lane_capacity=lane_capacity,
            backpressure=backpressure,
        )
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
            limits=limits,
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
        self._host = ISOLATIONS[isolation](config)
        super().__init__(
            WorkerCourier(self._host),
            max_pending=max_pending,
            backpressure=backpressure,
            linger=linger,
            spool_dir=config.spool_dir,
        )

    # -- the user's side ----------------------------------------------------

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

    def status(self) -> dict[str, Any]:
        """Queue depth, counts and the worker's state, for a quick look."""
        status = self.door_status()
        status |= {
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


def _of_run(name: Any, doc: Any) -> str:
    """`` of run <uid>`` for a document that names its run plainly, else ``""``."""
    try:
        run = doc["uid"] if name == "start" else doc["run_start"]
        return f" of run {short_uid(run)}"
    except Exception:
        return ""
