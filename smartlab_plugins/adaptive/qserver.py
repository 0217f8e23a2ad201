"""The processes of an out-of-loop experiment: Redis, the queueserver's RE Manager.

bluesky-queueserver's RE Manager keeps its queue and history in Redis and runs
plans in a worker process whose environment is
:mod:`smartlab_plugins.adaptive.qserver_startup` (the simulated instruments,
a RunEngine with SmartLab subscribed, the plans an agent may submit). The tests
and ``smartlab demo adaptive`` start both here, on free loopback ports, with
their files in a temporary folder, and stop them afterwards::

    with RedisServer(run_dir) as redis, REManager(run_dir, redis.address, tiled_env) as manager:
        api = manager.api()          # a bluesky_queueserver_api REManagerAPI (0MQ)

At a facility both already run as services; only the agent is started by hand.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from smartlab_plugins import settings
from smartlab_plugins.processes import ChildProcess, ProcessStartError
from smartlab_plugins.server import free_port

STARTUP_MODULE = "smartlab_plugins.adaptive.qserver_startup"
PERMISSIONS_FILE = "user_group_permissions.yaml"
EXISTING_PLANS_FILE = "existing_plans_and_devices.yaml"
REDIS_INSTALL_HINT = (
    "install Debian's redis-server (`make redis` does it: apt-get install redis-server, as root)"
)


def permissions_path() -> Path:
    """The user-group permissions file shipped with the startup module (not imported here)."""
    spec = importlib.util.find_spec(STARTUP_MODULE)
    return Path(next(iter(spec.submodule_search_locations))) / PERMISSIONS_FILE


class RedisServer(ChildProcess):
    """``redis-server`` on a free loopback port, data in ``run_dir``, nothing saved to disk."""

    name = "redis"

    def __init__(self, run_dir: Path, port: int | None = None) -> None:
        super().__init__(run_dir)
        self.host = settings.DEFAULT_HOST
        self.port = port or free_port(self.host)

    @property
    def address(self) -> str:
        """The address as the RE Manager takes it (``host:port``)."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ProcessStartError(
                f"redis-server not found on PATH: the queueserver's RE Manager needs Redis; "
                f"{REDIS_INSTALL_HINT}"
            )
        self._spawn(
            [
                executable,
                "--bind", self.host,
                "--port", str(self.port),
                "--dir", str(self.run_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ]
        )  # fmt: skip
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed(f"redis-server exited with code {self.process.returncode}")
            try:
                if redis.Redis(host=self.host, port=self.port, socket_timeout=1.0).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise self._failed(f"redis-server did not answer at {self.address} within {timeout:.0f} s")

    def __enter__(self) -> RedisServer:
        return self.start()


class REManager(ChildProcess):
    """bluesky-queueserver's RE Manager on free loopback 0MQ ports, with SmartLab's worker.

    ``env`` is added to this process' environment for the manager and its RE
    Worker; it must name the Tiled server the worker's SmartLab publishes to
    (``SMARTLAB_TILED_URI``, ``SMARTLAB_API_KEY``): the startup module reads
    them from there, never from code. The list of existing plans and devices
    is generated in ``run_dir`` when the environment opens.
    """

    name = "re_manager"

    def __init__(
        self,
        run_dir: Path,
        redis_address: str,
        env: Mapping[str, str] | None = None,
        control_port: int | None = None,
    ) -> None:
        super().__init__(run_dir)
        self.redis_address = redis_address
        self.env = dict(env or {})
        self.host = settings.DEFAULT_HOST
        self.control_port = control_port or free_port(self.host)
        self.info_port = free_port(self.host)
        self.redis_prefix = f"smartlab_{uuid.uuid4().hex[:8]}"

    @property
    def control_address(self) -> str:
        """The 0MQ control address clients connect to."""
        return f"tcp://{self.host}:{self.control_port}"

    def api(self, timeout: float = 2.0):
        """A 0MQ ``REManagerAPI`` of this manager."""
        from bluesky_queueserver_api.zmq import REManagerAPI

        return REManagerAPI(zmq_control_addr=self.control_address, timeout_recv=timeout)

    def start(self, timeout: float = 60.0) -> REManager:
        for key in ("SMARTLAB_TILED_URI", "SMARTLAB_API_KEY"):
            if not (self.env.get(key) or os.environ.get(key)):
                raise ProcessStartError(
                    f"{key} is not set: the RE Worker's SmartLab reads the Tiled server and its "
                    "key from SMARTLAB_TILED_URI and SMARTLAB_API_KEY"
                )
        cmd = [
            sys.executable,
            "-c",
            "import sys; from bluesky_queueserver.manager.start_manager import start_manager; "
            "sys.exit(start_manager())",
            "--zmq-control-addr", f"tcp://{self.host}:{self.control_port}",
            "--zmq-info-addr", f"tcp://{self.host}:{self.info_port}",
            "--zmq-publish-console", "OFF",
            "--redis-addr", self.redis_address,
            "--redis-name-prefix", self.redis_prefix,
            "--startup-module", STARTUP_MODULE,
            "--existing-plans-devices", str(self.run_dir / EXISTING_PLANS_FILE),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--user-group-permissions", str(permissions_path()),
        ]  # fmt: skip
        self._spawn(cmd, {**os.environ, **self.env})
        api = self.api(timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise self._failed(f"the RE Manager exited with code {self.process.returncode}")
                try:
                    api.status()
                    return self
                except api.RequestTimeoutError:
                    time.sleep(0.2)
        finally:
            api.close()
        raise self._failed(
            f"the RE Manager did not answer at {self.control_address} within {timeout:.0f} s"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Close the worker environment, stop the manager safely, then make sure it is gone."""
        if self.process is not None and self.process.poll() is None:
            api = self.api(timeout=2.0)
            try:
                if api.status().get("worker_environment_exists"):
                    api.environment_close()
                    api.wait_for_idle(timeout=timeout)
                api.send_request(method="manager_stop", params={"option": "safe_off"})
                self.process.wait(timeout=timeout)
            except Exception:  # already unresponsive: the signals below end it
                pass
            finally:
                api.close()
        super().stop(timeout)

    def __enter__(self) -> REManager:
        return self.start()
