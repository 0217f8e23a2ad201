"""The embedded, writable Tiled server, and a handle to run it in a child process.

A writable Tiled catalog needs a file store *and* a SQL table store (the
``TiledWriter`` appends event rows to SQL tables), so the data folder holds::

    catalog.db        the catalog (SQLite)
    data/             arrays and tables written as files
    tables.db         SQL tables (SQLite)
    external/         readable area for detector files (e.g. ophyd's .npy frames)
    api_key           generated key, mode 0600 (unless SMARTLAB_API_KEY is set)

Every request needs the API key unless the server is started ``public``, in
which case anyone may read and only key holders may write.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from smartlab_plugins import settings

EXTERNAL_SUBDIR = "external"


class ServerStartError(RuntimeError):
    """The embedded Tiled server did not come up."""


def storage_paths(data_dir: Path) -> dict[str, Path]:
    """The files and folders of a data folder, by role."""
    return {
        "catalog": data_dir / "catalog.db",
        "files": data_dir / "data",
        "tables": data_dir / "tables.db",
        "external": data_dir / EXTERNAL_SUBDIR,
    }


def build_app(data_dir: Path, api_key: str, public: bool = False):
    """A Tiled FastAPI app serving a writable catalog in ``data_dir``."""
    from tiled.catalog import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app as tiled_build_app

    paths = storage_paths(data_dir)
    for folder in (paths["files"], paths["external"]):
        folder.mkdir(parents=True, exist_ok=True)
    tree = from_uri(
        f"sqlite:///{paths['catalog']}",
        writable_storage=[str(paths["files"]), f"sqlite:///{paths['tables']}"],
        readable_storage=[str(data_dir)],
        init_if_not_exists=True,
    )
    auth = Authentication(allow_anonymous_access=public, single_user_api_key=api_key)
    return tiled_build_app(tree, auth, serialization_registry=_serializers())


def _serializers():
    """Tiled's serializers plus bluesky-tiled-plugins' document export of runs.

    ``BlueskyRun.documents()`` (used by ``smartlab replay``) asks the server
    for the run as a JSON sequence of documents, which needs this exporter.
    """
    import copy

    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)
    return registry


def serve(
    data_dir: Path,
    host: str = settings.DEFAULT_HOST,
    port: int = settings.DEFAULT_PORT,
    public: bool = False,
) -> None:
    """Run the embedded server in this process until interrupted."""
    import uvicorn

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    key, generated = settings.server_api_key(data_dir)
    app = build_app(data_dir, key, public=public)
    key_file = data_dir / settings.API_KEY_FILENAME
    if generated:
        source = f"generated and stored in {key_file} (mode 0600): {key}"
    elif os.environ.get("SMARTLAB_API_KEY"):
        source = "from SMARTLAB_API_KEY"
    else:
        source = f"stored in {key_file}"
    access = "anyone may read, the key is needed to write" if public else "the key is needed"
    print(
        f"SmartLab Tiled server\n"
        f"  uri:       http://{host}:{port}\n"
        f"  data dir:  {data_dir}\n"
        f"  API key:   {source}\n"
        f"  access:    {access}\n"
        f"Clients: export SMARTLAB_TILED_URI=http://{host}:{port} SMARTLAB_API_KEY=<key>",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def free_port(host: str = settings.DEFAULT_HOST) -> int:
    """A TCP port that is free now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_up(uri: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Block until a Tiled server answers at ``uri``, or raise ServerStartError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"the Tiled server process exited with code {process.returncode} before "
                f"answering at {uri}"
            )
        try:
            httpx.get(f"{uri}/api/v1/", timeout=2.0)
            return
        except httpx.HTTPError as exc:
            last_error = exc
            time.sleep(0.1)
    raise ServerStartError(
        f"no Tiled server answered at {uri} within {timeout:.0f} s: {last_error}"
    )


class EmbeddedServer:
    """``smartlab serve`` in a child process, for the demo, the tests and benchmarks.

    The server runs in its own process so that its work never competes with
    the RunEngine for the GIL. Use as a context manager::

        with EmbeddedServer(data_dir) as server:
            client = server.client()
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        host: str = settings.DEFAULT_HOST,
        api_key: str | None = None,
        public: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir or settings.default_data_dir()).expanduser().resolve()
        self.host = host
        self.port = port or free_port(host)
        self.public = public
        self.log_path = log_path or self.data_dir / "server.log"
        self._explicit_key = api_key
        self.api_key: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def external_dir(self) -> Path:
        """A folder inside the server's readable area, for detector files."""
        return storage_paths(self.data_dir)["external"]

    def start(self, timeout: float = 60.0) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.api_key = self._explicit_key or settings.server_api_key(self.data_dir)[0]
        env = {**os.environ, "SMARTLAB_API_KEY": self.api_key}
        cmd = [
            sys.executable,
            "-m",
            "smartlab_plugins.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--host",
            self.host,
        ]
        if self.public:
            cmd.append("--public")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until_up(self.uri, timeout=timeout, process=self.process)
        except ServerStartError as exc:
            self.stop()
            raise ServerStartError(f"{exc}; see {self.log_path}") from None
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def client(self):
        """A Tiled client of this server, authenticated with its key."""
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
