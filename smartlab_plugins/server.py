"""The embedded, writable Tiled server, and a handle to run it in a child process.

A writable Tiled catalog needs a file store *and* a SQL table store (the
``TiledWriter`` appends event rows to SQL tables), so the data folder holds::

    catalog.db        the catalog (SQLite)
    data/             arrays and tables written as files
    tables.db         SQL tables (SQLite, in WAL mode: readers never block appends)
    external/         the only area detector files are served from (e.g. ophyd's .npy
                      frames, areaDetector HDF5): the catalog and key are not readable
    api_key           generated key, mode 0600 (unless SMARTLAB_API_KEY is set)

Given a PostgreSQL database instead (``smartlab serve --catalog``,
``SMARTLAB_CATALOG_URI`` or ``[server] catalog`` in the config file), the
catalog *and* the SQL tables live in that database, which several machines can
share; arrays and other files stay in ``data/``.

Every request needs the API key unless the server is started ``public``, in
which case anyone may read and only key holders may write.

Streaming is on: Tiled's streaming cache pushes every node creation, metadata
update, array write and table append to websocket subscribers
(``node.subscribe()`` in ``tiled.client``). One server process keeps the cache
in memory; several processes serving one catalog share it in Redis
(``--streaming-cache redis://…``).
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
from smartlab_plugins.assembly.external import EXTERNAL_SUBDIR
from smartlab_plugins.gc_pauses import freeze_what_lives_now
from smartlab_plugins.settings import redact

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


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


def catalog_storage(data_dir: Path, catalog_uri: str | None = None) -> tuple[str, list[str]]:
    """The catalog URI and the writable storage Tiled is given.

    Without ``catalog_uri``, SQLite files in ``data_dir``. With a PostgreSQL URI,
    that database holds the catalog (through asyncpg, Tiled's driver for it) and
    the SQL tables ``TiledWriter`` appends rows to (through ADBC, which wants the
    plain ``postgresql://`` scheme); the two never clash, as Tiled names its data
    tables ``table_<hash>``. Files stay in the data folder.

    A table-store URI with a user and no password would reach libpq with the
    password ``None`` (Tiled 0.2.20 fills in its missing half), so a user without
    a password goes as libpq's ``user`` parameter, and libpq finds the password in
    ``PGPASSWORD`` or ``~/.pgpass``.
    """
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    paths = storage_paths(data_dir)
    if catalog_uri is None:
        tables = f"sqlite:///{paths['tables']}"
        return f"sqlite:///{paths['catalog']}", [str(paths["files"]), tables]
    scheme, _, rest = catalog_uri.partition("://")
    try:
        url = make_url(catalog_uri) if scheme in POSTGRES_SCHEMES and rest else None
    except ArgumentError:
        url = None
    if url is None:
        raise settings.ConfigurationError(
            f"catalog {redact(catalog_uri)}: expected a PostgreSQL database, "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    where = (url.host, url.port, url.database)
    catalog = URL.create("postgresql+asyncpg", url.username, url.password, *where, url.query)
    if url.password is None and url.username is not None:
        tables = URL.create("postgresql", None, None, *where, {**url.query, "user": url.username})
    else:
        tables = catalog.set(drivername="postgresql")
    return catalog.render_as_string(hide_password=False), [
        str(paths["files"]),
        tables.render_as_string(hide_password=False),
    ]


#: The streaming cache of a single server process (see :func:`build_app`).
MEMORY_CACHE = "memory"


def build_app(
    data_dir: Path,
    api_key: str,
    public: bool = False,
    catalog_uri: str | None = None,
    streaming_cache: str = MEMORY_CACHE,
):
    """A Tiled FastAPI app serving a writable catalog in ``data_dir`` or in PostgreSQL.

    ``streaming_cache`` is where Tiled keeps what it pushes to subscribers:
    ``memory`` for one server process, ``redis://…`` when several share the
    catalog. (Given to the catalog in Python: ``tiled serve catalog --cache``
    crashes in tiled 0.2.20.)
    """
    from tiled.catalog import from_uri
    from tiled.config import Authentication, StreamingCacheConfig
    from tiled.server.app import build_app as tiled_build_app

    from smartlab_plugins import dependants, tiled_paths

    paths = storage_paths(data_dir)
    for folder in (paths["files"], paths["external"]):
        folder.mkdir(parents=True, exist_ok=True)
    catalog, writable = catalog_storage(data_dir, catalog_uri)
    pool: dict[str, int] = {}
    if catalog_uri is None:
        use_wal(paths["tables"])
        # One connection to the SQLite tables: WAL lets readers and one writer work side by
        # side, but two writers (the raw run's rows and the results' rows, appended at once)
        # get "database is locked" from a pool of several. Requests queue for it instead.
        pool = {"storage_pool_size": 1, "storage_max_overflow": 0}
    tree = from_uri(
        catalog,
        writable_storage=writable,
        readable_storage=[str(paths["external"])],  # never the catalog or the key beside it
        init_if_not_exists=True,
        cache_config=StreamingCacheConfig(uri=streaming_cache).model_dump(),
        **pool,
    )
    auth = Authentication(allow_anonymous_access=public, single_user_api_key=api_key)
    tiled_paths.install()  # no access policy here: a node's path in one catalog query
    dependants.install()  # FastAPI analyses each endpoint's dependencies once, not per request
    return tiled_build_app(tree, auth, serialization_registry=_serializers())


def _shown_cache(uri: str) -> str:
    return uri if uri == MEMORY_CACHE else redact(uri)


def use_wal(tables: Path) -> None:
    """Put the SQLite table store in write-ahead-log mode (the mode stays in the file).

    In its default mode a reader of a table that is being appended to makes
    the appends fail ("database is locked", HTTP 500); in WAL mode readers and
    the writer do not block each other. (DuckDB, the other table store, crashes
    the server in the same situation in tiled 0.2.20, so it is not used.)
    """
    import sqlite3

    with sqlite3.connect(tables) as connection:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise ServerStartError(f"could not put {tables} in WAL mode (SQLite answered {mode!r})")


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


class CatalogUnreachable(ConnectionError):
    """The PostgreSQL catalog cannot be used; the message names the (redacted) URI and why."""


def connect_error(uri: str, timeout: float = 5.0) -> str | None:
    """Why a connection to the database at ``uri`` fails now, in one line; None if it works.

    Tiled reaches PostgreSQL through libpq (ADBC, the table store) and asyncpg (the
    catalog); libpq answers the same questions for both, so this asks it.
    """
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi

    probe = f"{uri}{'&' if '?' in uri else '?'}connect_timeout={max(1, round(timeout))}"
    try:
        adbc_driver_postgresql.dbapi.connect(probe).close()
    except adbc_driver_manager.Error as exc:
        return " ".join(str(exc).split())
    return None


def _password_to_environment(uri: str) -> str:
    """``uri`` without its password, which moves to ``PGPASSWORD`` in this process.

    libpq (Tiled's table store) and asyncpg (its catalog) both read the password
    from there (or from ``~/.pgpass``), so it never reaches the command line of the
    catalog-init process Tiled starts, nor the ``alembic.ini`` it writes for it.
    """
    from sqlalchemy.engine import URL, make_url

    url = make_url(uri)
    if url.password is None:
        return uri
    os.environ["PGPASSWORD"] = url.password
    bare = URL.create(
        url.drivername, url.username, None, url.host, url.port, url.database, url.query
    )
    return bare.render_as_string(hide_password=False)


def serve(
    data_dir: Path,
    host: str = settings.DEFAULT_HOST,
    port: int = settings.DEFAULT_PORT,
    public: bool = False,
    catalog_uri: str | None = None,
    catalog_source: str = "the caller",
    streaming_cache: str = MEMORY_CACHE,
) -> None:
    """Run the embedded server in this process until interrupted.

    ``catalog_uri``: a PostgreSQL database for the catalog and tables (checked
    before anything starts; ``catalog_source`` says where the setting came from,
    for that message); None: SQLite files in ``data_dir``.
    """
    os.umask(0o077)  # the catalog, tables, files and key: the user's alone (0700, 0600)
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _warn_if_open(data_dir)
    key, generated = settings.server_api_key(data_dir)
    if catalog_uri is not None:
        shown = redact(catalog_uri)
        catalog_storage(data_dir, catalog_uri)  # a URI of another kind fails here, in one line
        catalog_uri = _password_to_environment(catalog_uri)
        if error := connect_error(catalog_storage(data_dir, catalog_uri)[1][-1]):
            raise CatalogUnreachable(
                f"cannot use the PostgreSQL catalog {shown} (from {catalog_source}): {error}"
            )
        catalog = f"{shown} (PostgreSQL: catalog and tables; files in {data_dir})"
    else:
        catalog = f"{storage_paths(data_dir)['catalog']} (SQLite, tables in the data dir)"
    import uvicorn  # after the checks: a wrong setting is reported without the wait
    from tiled.catalog.adapter import DatabaseInitializationError

    try:
        app = build_app(
            data_dir, key, public=public, catalog_uri=catalog_uri, streaming_cache=streaming_cache
        )
    except DatabaseInitializationError as exc:
        last = (str(exc).strip().splitlines() or ["no output"])[-1]
        raise CatalogUnreachable(f"Tiled could not set up the catalog {catalog}: {last}") from None
    key_file = data_dir / settings.API_KEY_FILENAME
    if generated:
        source = f"generated: {settings.shown_key(key)}, read it from {key_file} (mode 0600)"
    elif os.environ.get("SMARTLAB_API_KEY"):
        source = "from SMARTLAB_API_KEY"
    else:
        source = f"stored in {key_file}"
    access = "anyone may read, the key is needed to write" if public else "the key is needed"
    print(
        f"SmartLab Tiled server\n"
        f"  uri:       http://{host}:{port}\n"
        f"  data dir:  {data_dir}\n"
        f"  catalog:   {catalog}\n"
        f"  API key:   {source}\n"
        f"  access:    {access}\n"
        f"  streaming: {_shown_cache(streaming_cache)} (clients: node.subscribe())\n"
        f"Clients: export SMARTLAB_TILED_URI=http://{host}:{port} SMARTLAB_API_KEY=<key>",
        flush=True,
    )
    freeze_what_lives_now()  # tiled's app, imported and built: no longer walked by full GCs
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _warn_if_open(data_dir: Path) -> None:
    """Say so when the data folder (catalog, tables, key) is open to other users."""
    import stat

    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        print(
            f"warning: {data_dir} is readable or writable by other users (mode {mode:04o}); "
            f"it holds the catalog and the API key: chmod 700 {data_dir}",
            file=sys.stderr,
            flush=True,
        )


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
    the RunEngine for the GIL. ``catalog_uri`` is a PostgreSQL database for the
    catalog and tables; None: SQLite in ``data_dir``, whatever the environment
    or the config file say. ``streaming_cache``: ``memory``, or a Redis URI shared
    with other server processes of the same catalog. Use as a context manager::

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
        catalog_uri: str | None = None,
        streaming_cache: str = MEMORY_CACHE,
    ) -> None:
        self.data_dir = Path(data_dir or settings.default_data_dir()).expanduser().resolve()
        self.host = host
        self.port = port or free_port(host)
        self.public = public
        self.catalog_uri = catalog_uri
        self.streaming_cache = streaming_cache
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
        env = {
            **os.environ,
            "SMARTLAB_API_KEY": self.api_key,
            # exactly this catalog, whatever the config file says; in the environment, so a
            # password is not on the command line
            "SMARTLAB_CATALOG_URI": self.catalog_uri or settings.SQLITE_CATALOG,
        }
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
            "--streaming-cache",
            self.streaming_cache,
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
