"""The Tiled server a demo publishes to: the one given, or the embedded one started for it.

Shared by every demo that needs a server (:mod:`smartlab_demos.live` and both halves of
the adaptive demo), with :func:`step`, which says what a demo is waiting for.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from smartlab_plugins import settings


@dataclass
class Target:
    """The Tiled server the demo publishes to; ``embedded_dir`` is set if the demo started it."""

    uri: str
    api_key: str | None
    embedded_dir: Path | None = None
    #: where detectors write files the server reads (its ``external/`` folder); None: unknown
    external_dir: Path | None = None


@contextlib.contextmanager
def tiled_server(tiled_uri: str | None, data_dir: Path | None, out: TextIO) -> Iterator[Target]:
    """The given server, or the embedded one started for the duration.

    For a given server, detector files go to the ``external/`` folder of ``data_dir``
    if that is given and has one (the server's own data folder, on this machine).
    """
    from smartlab_plugins.server import EmbeddedServer, free_port, storage_paths

    uri = tiled_uri or settings.tiled_uri()
    if uri:
        external = storage_paths(Path(data_dir))["external"] if data_dir else None
        yield Target(
            uri,
            settings.api_key(data_dir),
            external_dir=external if external and external.is_dir() else None,
        )
        return

    port = settings.DEFAULT_PORT if _port_is_free(settings.DEFAULT_PORT) else free_port()
    server = EmbeddedServer(data_dir, port=port)
    with step(out, f"Starting the embedded Tiled server (data in {server.data_dir})", "up"):
        server.start()
    try:
        yield Target(server.uri, server.api_key, server.data_dir, server.external_dir)
    finally:
        server.stop()


@contextlib.contextmanager
def step(out: TextIO, doing: str, done: str = "done") -> Iterator[None]:
    """Say what the demo waits for, then how long it took: no wait of several seconds is silent."""
    print(f"{doing} ...", end=" ", file=out, flush=True)
    started = time.monotonic()
    yield
    print(f"{done} in {time.monotonic() - started:.1f} s", file=out, flush=True)


def _port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of the default host (the embedded server's port)."""
    try:
        with socket.create_connection((settings.DEFAULT_HOST, port), timeout=0.2):
            return False
    except OSError:
        return True
