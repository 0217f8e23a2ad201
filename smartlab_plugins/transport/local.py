"""``smartlab worker`` processes started from Python: for the distributed demo, tests, benchmarks.

At a facility each worker runs under systemd on its own machine. On one machine the
demo, the tests and ``benchmarks/transport.py`` start them as child processes, each
logging to a file, and wait until they have shared the broker's shards::

    workers = [WorkerProcess(f"w{i}", tiled_uri, api_key, run_dir) for i in range(2)]
    wait_for_shares(broker_settings, [w.name for w in workers])
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from smartlab_plugins.transport.settings import BrokerSettings, connect


class WorkerProcess:
    """One ``smartlab worker`` child process, its output in ``<log_dir>/worker-<name>.log``."""

    def __init__(
        self,
        name: str,
        tiled_uri: str,
        api_key: str | None,
        log_dir: Path,
        plugins: Sequence[str] = ("peak_stats",),
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f"worker-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "smartlab_plugins.transport.cli", "worker"]
        command += ["--name", name, "--tiled", tiled_uri, *extra_args, "--plugins", *plugins]
        environment = {**os.environ, **(env or {})}
        if api_key:
            environment["SMARTLAB_API_KEY"] = api_key
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def log(self) -> str:
        """Everything the worker has logged so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: the crash that takeover must survive."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to finish (SIGTERM); kill it if it has not within ``timeout``."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def shard_holders(settings: BrokerSettings, client=None) -> list[str | None]:
    """Who holds each shard's lease now (None: nobody); ``client``: a broker client to reuse."""
    own = client is None
    client = connect(settings) if own else client
    try:
        held = client.mget([settings.lease(s) for s in range(settings.shards)])
    finally:
        if own:
            client.close()
    return [h.decode() if h is not None else None for h in held]


def wait_for_shares(settings: BrokerSettings, names: Sequence[str], timeout: float = 60.0) -> None:
    """Block until each named worker holds its fair share of the shards.

    Raises TimeoutError naming who holds what, so a worker that failed to start
    is seen at once rather than as a run nobody analyses.
    """
    share = -(-settings.shards // len(names))
    deadline = time.monotonic() + timeout
    client = connect(settings)
    try:
        while True:
            holders = shard_holders(settings, client)
            counts = [holders.count(name) for name in names]
            if sum(counts) == settings.shards and max(counts) <= share:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the workers {list(names)} did not share the {settings.shards} shards "
                    f"within {timeout:.0f} s; holders now: {holders}"
                )
            time.sleep(0.1)
    finally:
        client.close()
