"""A real redis-server on a free loopback port, and real ``smartlab worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from smartlab_plugins.adaptive.qserver import RedisServer
from smartlab_plugins.server import EmbeddedServer
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


class WorkerProcess:
    """One ``smartlab worker`` child, logging to a file."""

    def __init__(self, name: str, tiled: EmbeddedServer, log_dir: Path, plugins: list[str]):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child's for its lifetime
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "smartlab_plugins.transport.cli", "worker",
                "--name", name, "--tiled", tiled.uri, "--plugins", *plugins,
            ],
            env={**os.environ, "SMARTLAB_API_KEY": tiled.api_key},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def shards(self, client: redis.Redis) -> list[int]:
        """The shards whose lease this worker holds."""
        count = BrokerSettings.load().shards
        leases = client.mget([BrokerSettings.load().lease(s) for s in range(count)])
        return [s for s, holder in enumerate(leases) if holder == self.name.encode()]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


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
