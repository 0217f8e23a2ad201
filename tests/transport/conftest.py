"""A real redis-server on a free loopback port, and real ``smartlab worker`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from smartlab_plugins.adaptive.qserver import RedisServer
from smartlab_plugins.server import EmbeddedServer
from smartlab_plugins.transport.local import WorkerProcess as LocalWorker
from smartlab_plugins.transport.settings import BrokerSettings

LEASE_S = 2.0


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server of this test; the environment points SmartLab at it (2 s leases)."""
    server = RedisServer(tmp_path / "redis").start()
    monkeypatch.setenv("SMARTLAB_BROKER_URI", f"redis://{server.address}/0")
    monkeypatch.setenv("SMARTLAB_BROKER_LEASE", str(LEASE_S))
    yield server
    server.stop()


@pytest.fixture
def broker_client(broker: RedisServer) -> redis.Redis:
    return redis.Redis(host=broker.host, port=broker.port)


class WorkerProcess(LocalWorker):
    """One ``smartlab worker`` child of a test, bound to the session's Tiled server."""

    def __init__(self, name: str, tiled: EmbeddedServer, log_dir: Path, plugins: list[str]):
        super().__init__(name, tiled.uri, tiled.api_key, log_dir, plugins)

    def shards(self, client: redis.Redis) -> list[int]:
        """The shards whose lease this worker holds."""
        count = BrokerSettings.load().shards
        leases = client.mget([BrokerSettings.load().lease(s) for s in range(count)])
        return [s for s, holder in enumerate(leases) if holder == self.name.encode()]


@pytest.fixture
def start_worker(
    broker: RedisServer, tiled_server: EmbeddedServer, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``smartlab worker`` processes against the test's broker; all stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(name: str, plugins: tuple[str, ...] = ("peak_stats",)) -> WorkerProcess:
        worker = WorkerProcess(name, tiled_server, tmp_path, list(plugins))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
