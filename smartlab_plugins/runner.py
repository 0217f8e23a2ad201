"""Where the worker runs: a child process (the default) or a thread.

The RunEngine's process should do almost nothing per document. Analysis,
``TiledWriter`` and publishing all need the GIL, so in a thread of the same
process they slow the scan about as much as running inline would; in a child
process they use another core and the RunEngine never waits for them. The
thread host exists for replays, tests and sessions that register plugins that
cannot be pickled.

Both hosts speak the same small protocol over a pair of channels (a pipe for
the process, queues for the thread), served by :func:`serve`:

parent to worker: ``ship``, ``enable``, ``disable``, ``register``, ``status``, ``live``,
``flush``, ``close``; worker to parent: ``ready``/``failed`` (once), ``log``, ``run`` (a run's
summary), ``results`` (for live views), ``reply``
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from smartlab_plugins.callbacks.external import ReadPolicy
from smartlab_plugins.compute import DaskEngine
from smartlab_plugins.manager import PluginManager, from_reference
from smartlab_plugins.publish import Publisher, RawRunWriter
from smartlab_plugins.worker import Shipment, Worker

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The worker could not start, or did not answer."""


@dataclass
class WorkerConfig:
    """Everything a worker needs, picklable so a child process can rebuild it."""

    tiled_uri: str
    api_key: str | None
    enabled: list[str] | None = None
    registered: list[object] = field(default_factory=list)
    raw: bool = True
    max_batch: int = 256
    max_failures: int = 3
    plugin_timeout: float = 30.0
    lane_capacity: int = 64
    max_growth_mb: float = 2048.0
    backpressure: str = "spill"
    nice: int = 5
    log_level: int = logging.INFO
    mode: str = "live"
    annotations: dict[str, Any] = field(default_factory=dict)
    #: Folder of the local journal of results not yet in Tiled; None keeps them in memory only.
    spool_dir: str | None = None
    #: Dask scheduler (or ``local[:N]``) for stateless plugins' batches; None: analyse here.
    compute: str | None = None
    #: Folders detector files may be read from; None: any but a Tiled server's own folder.
    data_roots: list[str] | None = None
    #: Largest declared size of one event's file-backed data; None: the default budget.
    max_event_bytes: int | None = None


class Session:
    """A worker with its publisher and raw writer, built from a config."""

    #: The results publisher to build (the broker's workers use one that resumes runs).
    publisher_class: type[Publisher] = Publisher

    def __init__(self, config: WorkerConfig) -> None:
        from tiled.client import from_uri

        def client():
            return from_uri(config.tiled_uri, api_key=config.api_key)

        plugins = PluginManager()
        for reference in config.registered:
            plugins.register(from_reference(reference))
        self.compute = DaskEngine(config.compute) if config.compute else None
        self.publisher = self.publisher_class(
            client,
            journal_dir=Path(config.spool_dir) if config.spool_dir else None,
            tiled_uri=config.tiled_uri,
        )
        self.raw = RawRunWriter(client) if config.raw else None
        self.worker = Worker(
            plugins,
            self.publisher,
            enabled=config.enabled,
            max_batch=config.max_batch,
            max_failures=config.max_failures,
            plugin_timeout=config.plugin_timeout,
            lane_capacity=config.lane_capacity,
            max_growth_mb=config.max_growth_mb,
            backpressure=config.backpressure,
            mode=config.mode,
            annotations=config.annotations,
            on_normalized=self.raw.put if self.raw is not None else None,
            compute=self.compute,
            policy=ReadPolicy.build(config.data_roots, config.max_event_bytes),
            raw=self.raw,
        )

    def ship(self, shipment: Shipment) -> list[dict[str, Any]]:
        """Analyse a shipment; the summaries of the runs it finished."""
        before = len(self.worker.summaries)
        self.worker.process(shipment)
        return self.worker.summaries[before:]

    def flush(self, timeout: float | None) -> bool:
        ok = self.worker.wait_idle(timeout)
        ok = self.publisher.flush(timeout) and ok
        if self.raw is not None:
            ok = self.raw.flush(timeout) and ok
        return ok

    def close(self, timeout: float | None) -> bool:
        self.worker.close()
        ok = self.publisher.close(timeout)
        if self.raw is not None:
            ok = self.raw.close(timeout) and ok
        if self.compute is not None:
            self.compute.close()
        return ok


def serve(recv: Callable[[], tuple], send: Callable[[tuple], None], config: WorkerConfig) -> None:
    """The worker's loop: build it, then answer messages until ``close``."""
    try:
        session = Session(config)
    except Exception as exc:
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    session.worker.on_results = lambda message: send(("results", message))
    send(("ready", {"plugins": session.worker.plugins.names(), "enabled": session.worker.enabled}))
    while True:
        try:
            kind, payload = recv()
        except (EOFError, OSError):  # the parent went away: finish what we have
            session.close(timeout=30)
            return
        if kind == "ship":
            try:
                for summary in session.ship(payload):
                    send(("run", summary))
            except Exception:
                logger.exception("internal error while analysing a shipment; the worker carries on")
            continue
        try:
            if kind == "close":
                send(("reply", session.close(payload)))
                return
            send(("reply", _control(session, kind, payload)))
        except Exception as exc:
            send(("reply", exc))


def _control(session: Session, kind: str, payload: Any) -> Any:
    worker = session.worker
    if kind == "enable":
        return worker.enable(payload)
    if kind == "disable":
        return worker.disable(payload)
    if kind == "register":
        return worker.plugins.register(from_reference(payload))
    if kind == "status":
        return worker.stats()
    if kind == "live":
        worker.live = dict(payload)
        return sorted(worker.live)
    if kind == "flush":
        return session.flush(payload)
    raise ValueError(f"unknown worker request {kind!r}")


class WorkerHost:
    """The parent's handle on a worker: send shipments, ask questions, close."""

    def __init__(self, config: WorkerConfig, start_timeout: float = 120.0) -> None:
        self.config = config
        self.alive = False
        self.summaries: list[dict[str, Any]] = []
        #: Called (on the listener thread) with each live-results message.
        self.result_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._send_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._replies: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        self._start()
        self._listener = threading.Thread(
            target=self._listen, name="smartlab-listener", daemon=True
        )
        self._listener.start()
        try:
            kind, payload = self._ready.get(timeout=start_timeout)
        except queue.Empty:
            raise WorkerError(
                f"the SmartLab worker did not start within {start_timeout:.0f} s"
            ) from None
        if kind != "ready":
            raise WorkerError(f"the SmartLab worker could not start: {payload}")
        self.alive = True
        self.plugins: list[str] = payload["plugins"]

    def ship(self, shipment: Shipment) -> None:
        """Send documents to the worker (blocks while the worker is busy reading)."""
        with self._send_lock:
            self._send(("ship", shipment))

    def request(self, kind: str, payload: Any = None, timeout: float | None = 60.0) -> Any:
        """Ask the worker something and wait for its answer."""
        if not self.alive:
            raise WorkerError("the SmartLab worker is not running")
        with self._request_lock:
            with self._send_lock:
                self._send((kind, payload))
            try:
                answer = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise WorkerError(
                    f"the SmartLab worker did not answer {kind!r} within {timeout} s"
                ) from None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self, timeout: float = 60.0) -> bool:
        if not self.alive:
            return False
        try:
            flushed = self.request("close", timeout, timeout=timeout + 10)
        finally:
            self.alive = False
            self._join(timeout=10)
        return bool(flushed)

    def _listen(self) -> None:
        while True:
            try:
                kind, payload = self._recv()
            except (EOFError, OSError):
                self._reap()
                if self.alive:
                    self.alive = False
                    logger.error(
                        "the SmartLab worker exited unexpectedly; analysis has stopped, scans go on"
                    )
                self._replies.put(WorkerError("the SmartLab worker exited"))
                return
            if kind is None:
                return
            if kind in ("ready", "failed"):
                self._ready.put((kind, payload))
            elif kind == "log":
                record = logging.makeLogRecord(payload)
                logging.getLogger(record.name).handle(record)
            elif kind == "run":
                self.summaries.append(payload)
            elif kind == "results":
                self._deliver(payload)
            elif kind == "reply":
                self._replies.put(payload)
            if kind == "failed":
                return

    def _deliver(self, message: dict[str, Any]) -> None:
        for callback in list(self.result_callbacks):
            try:
                callback(message)
            except Exception:
                logger.exception("a live view failed on results of %s", message.get("plugin"))

    # -- channels, per host ------------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _send(self, message: tuple) -> None:
        raise NotImplementedError

    def _recv(self) -> tuple:
        raise NotImplementedError

    def _join(self, timeout: float) -> None:
        raise NotImplementedError

    def _reap(self) -> None:
        """Collect the worker's exit status, if it is a process that has exited."""


class ProcessHost(WorkerHost):
    """The worker in a child Python process, at lower CPU priority than the scan.

    The child is a fresh interpreter (``python -m smartlab_plugins.worker_main``)
    connected by a socket pair, not a ``multiprocessing`` child: spawning would
    re-run the user's script in the child unless it is guarded by
    ``if __name__ == "__main__"``, and forking a process that holds the
    RunEngine's threads is unsafe.
    """

    @property
    def pid(self) -> int:
        """The worker process' id (for monitoring its memory, profiling it)."""
        return self._process.pid

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "smartlab_plugins.worker_main", str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._conn.send(self.config)

    def _send(self, message: tuple) -> None:
        self._conn.send(message)

    def _reap(self) -> None:
        self._process.poll()

    def _recv(self) -> tuple:
        return self._conn.recv()

    def _join(self, timeout: float) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()


class ThreadHost(WorkerHost):
    """The worker in a thread of this process (replays, tests, unpicklable plugins)."""

    def _start(self) -> None:
        # Bounded like the process host's pipe: a busy worker makes the feeder wait,
        # so the backlog stays in SmartLab's bounded deque, where drops are counted.
        self._inbox: queue.Queue = queue.Queue(maxsize=2)
        self._outbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=serve,
            args=(self._inbox.get, self._outbox.put, self.config),
            name="smartlab-worker",
            daemon=True,
        )
        self._thread.start()

    def _send(self, message: tuple) -> None:
        self._inbox.put(message)

    def _recv(self) -> tuple:
        return self._outbox.get()

    def _join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._outbox.put((None, None))


class _PipeLogHandler(logging.handlers.QueueHandler):
    """Forward the child's log records to the parent, which logs them as its own."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        super().__init__(queue.SimpleQueue())
        self._send_message = send

    def enqueue(self, record: logging.LogRecord) -> None:
        self._send_message(("log", record.__dict__))


def child_main(fd: int) -> None:
    """Serve a worker over the connection on file descriptor ``fd`` (in the child)."""
    conn = Connection(fd)
    config: WorkerConfig = conn.recv()
    if config.nice:
        os.nice(config.nice)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(config.log_level)
    serve(conn.recv, send, config)
