"""Where the worker runs: a child process (the default) or a thread.

The RunEngine's process should do almost nothing per document. Analysis,
``TiledWriter`` and publishing all need the GIL, so in a thread of the same
process they slow the scan about as much as running inline would; in a child
process they use another core and the RunEngine never waits for them. The
thread host exists for replays, tests and sessions that register plugins that
cannot be pickled.

Both hosts speak the same typed messages (:mod:`smartlab_plugins.protocol`)
over a pair of channels (a socket for the process, queues for the thread),
served by :func:`smartlab_plugins.worker.serving.serve`. This module is the
RunEngine's side: it imports none of the worker's.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from smartlab_plugins import protocol, settings
from smartlab_plugins.protocol import Reply, Shipment, WorkerConfig

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The worker could not start, or did not answer."""


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
            started = self._ready.get(timeout=start_timeout)
        except queue.Empty:
            raise WorkerError(
                f"the SmartLab worker did not start within {start_timeout:.0f} s"
            ) from None
        if not isinstance(started, protocol.Ready):
            raise WorkerError(f"the SmartLab worker could not start: {started.reason}")
        self.alive = True
        self.plugins: list[str] = started.plugins

    def ship(self, shipment: Shipment) -> None:
        """Send documents to the worker (blocks while the worker is busy reading)."""
        with self._send_lock:
            self._send(shipment)

    def request(self, request: protocol.Request, timeout: float | None = 60.0) -> Any:
        """Ask the worker something and wait for its answer (raised, if it is an error)."""
        if not self.alive:
            raise WorkerError("the SmartLab worker is not running")
        with self._request_lock:
            with self._send_lock:
                self._send(request)
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise WorkerError(
                    f"the SmartLab worker did not answer {type(request).__name__} within "
                    f"{timeout} s"
                ) from None
        if reply.error is not None:
            raise reply.error
        return reply.value

    def close(self, timeout: float = 60.0) -> bool:
        if not self.alive:
            return False
        try:
            flushed = self.request(protocol.Close(timeout), timeout=timeout + 10)
        finally:
            self.alive = False
            self._join(timeout=10)
        return bool(flushed)

    def _listen(self) -> None:
        while True:
            try:
                message = self._recv()
            except (EOFError, OSError):
                self._reap()
                if self.alive:
                    self.alive = False
                    logger.error(
                        "the SmartLab worker exited unexpectedly; analysis has stopped, scans go on"
                    )
                self._replies.put(Reply(error=WorkerError("the SmartLab worker exited")))
                return
            match message:
                case None:
                    return
                case protocol.Ready() | protocol.Failed():
                    self._ready.put(message)
                    if isinstance(message, protocol.Failed):
                        return
                case protocol.Log(record):
                    record = logging.makeLogRecord(record)
                    logging.getLogger(record.name).handle(record)
                case protocol.RunFinished(summary):
                    self.summaries.append(summary)
                case protocol.LiveResults(results):
                    self._deliver(results)
                case Reply():
                    self._replies.put(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        for callback in list(self.result_callbacks):
            try:
                callback(message)
            except Exception:
                logger.exception("a live view failed on results of %s", message.get("plugin"))

    # -- channels, per host ------------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _send(self, message: Any) -> None:
        raise NotImplementedError

    def _recv(self) -> Any:
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
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        threads = settings.worker_threads()
        if threads is not None:  # torch's default, a thread per core, fights the scan for them
            env["OMP_NUM_THREADS"] = str(threads)
        parent_sock, child_sock = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "smartlab_plugins.worker_main", str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()],
            env=env,
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._conn.send(self.config)

    def _send(self, message: Any) -> None:
        self._conn.send(message)

    def _reap(self) -> None:
        self._process.poll()

    def _recv(self) -> Any:
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
        from smartlab_plugins.worker.serving import serve

        self._thread = threading.Thread(
            target=serve,
            args=(self._inbox.get, self._outbox.put, self.config),
            name="smartlab-worker",
            daemon=True,
        )
        self._thread.start()

    def _send(self, message: Any) -> None:
        self._inbox.put(message)

    def _recv(self) -> Any:
        return self._outbox.get()

    def _join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._outbox.put(None)
