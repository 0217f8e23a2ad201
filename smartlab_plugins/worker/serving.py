"""The worker's side of the protocol: build a worker from its config, answer messages.

:func:`serve` runs in the worker's child process (:func:`child_main`, the
entry point of ``python -m smartlab_plugins.worker_main``) or on a thread of
the RunEngine's process (:class:`~smartlab_plugins.runner.ThreadHost`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from smartlab_plugins import protocol
from smartlab_plugins.assembly.external import ReadPolicy
from smartlab_plugins.compute import DaskEngine
from smartlab_plugins.connection import client_factory
from smartlab_plugins.gc_pauses import freeze_if_more_imported
from smartlab_plugins.manager import PluginManager, from_reference
from smartlab_plugins.protocol import Reply, Shipment, WorkerConfig
from smartlab_plugins.publish import Publisher, RawRunWriter
from smartlab_plugins.worker.core import Worker

logger = logging.getLogger(__name__)


class Session:
    """A worker with its publisher and raw writer, built from a config."""

    #: The results publisher to build (the broker's workers use one that resumes runs).
    publisher_class: type[Publisher] = Publisher

    def __init__(self, config: WorkerConfig) -> None:
        client = client_factory(config.tiled_uri, config.api_key)
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
            limits=config.limits,
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


def serve(recv: Callable[[], Any], send: Callable[[Any], None], config: WorkerConfig) -> None:
    """The worker's loop: build it, then answer messages until :class:`~protocol.Close`."""
    try:
        session = Session(config)
    except Exception as exc:
        send(protocol.Failed(f"{type(exc).__name__}: {exc}"))
        return
    session.worker.on_results = lambda message: send(protocol.LiveResults(message))
    send(protocol.Ready(session.worker.plugins.names(), list(session.worker.enabled)))
    while True:
        try:
            message = recv()
        except (EOFError, OSError):  # the parent went away: finish what we have
            session.close(timeout=30)
            return
        if isinstance(message, Shipment):
            try:
                for summary in session.ship(message):
                    send(protocol.RunFinished(summary))
                    # a plugin's libraries and model, loaded by its first run: out of full GCs
                    freeze_if_more_imported()
            except Exception:
                logger.exception("internal error while analysing a shipment; the worker carries on")
            continue
        try:
            if isinstance(message, protocol.Close):
                send(Reply(session.close(message.timeout)))
                return
            send(Reply(_answer(session, message)))
        except Exception as exc:
            send(Reply(error=exc))


def _answer(session: Session, request: protocol.Request) -> Any:
    """What the worker answers to one request."""
    worker = session.worker
    match request:
        case protocol.Enable(name):
            return worker.enable(name)
        case protocol.Disable(name):
            return worker.disable(name)
        case protocol.Register(reference):
            return worker.plugins.register(from_reference(reference))
        case protocol.StatusRequest():
            return worker.stats()
        case protocol.SetLive(wanted):
            worker.live = dict(wanted)
            return sorted(worker.live)
        case protocol.Flush(timeout):
            return session.flush(timeout)
    raise TypeError(f"not a worker request: {type(request).__name__}")


class _PipeLogHandler(logging.handlers.QueueHandler):
    """Forward the child's log records to the parent, which logs them as its own."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(queue.SimpleQueue())
        self._send_message = send

    def enqueue(self, record: logging.LogRecord) -> None:
        self._send_message(protocol.Log(record.__dict__))


def child_main(fd: int) -> None:
    """Serve a worker over the connection on file descriptor ``fd`` (in the child)."""
    conn = Connection(fd)
    config: WorkerConfig = conn.recv()
    if config.nice:
        os.nice(config.nice)
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            conn.send(message)

    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(config.log_level)
    serve(conn.recv, send, config)
