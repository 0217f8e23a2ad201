"""A PostgreSQL server of its own for the tests and for trying Tiled on PostgreSQL.

At a facility PostgreSQL already runs as a service and ``smartlab serve
--catalog postgresql://…`` points at it. Here, Debian's binaries (the
``postgresql`` package; ``make postgres`` installs it) run a throwaway cluster
in a run folder: ``initdb`` once, then ``postgres`` in the foreground on a free
loopback port, with its unix socket in the run folder too::

    with PostgresServer(run_dir) as postgres:
        postgres.uri       # postgresql://smartlab:PASSWORD@127.0.0.1:PORT/smartlab

PostgreSQL refuses to run as root, so as root (a CI container) both run as
Debian's ``postgres`` system user, which then owns the run folder and must be
able to reach it; ``PostgresServer()`` without a folder makes a temporary one it
can reach, removed when the ``with`` block ends.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from smartlab_plugins import settings
from smartlab_plugins.processes import ChildProcess, ProcessStartError, as_user, log_tail
from smartlab_plugins.server import connect_error, free_port
from smartlab_plugins.settings import redact

INSTALL_HINT = "install Debian's postgresql (`make postgres` does it: apt-get, as root)"
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian's binaries, one folder per major version
SYSTEM_USER = "postgres"
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def bin_dir() -> Path:
    """The folder of ``initdb`` and ``postgres``: the one ``initdb`` on PATH is in, else the
    newest of Debian's ``/usr/lib/postgresql/VERSION/bin`` (Debian keeps them off PATH)."""
    candidates = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    debian = DEBIAN_ROOT.glob("*/bin")
    candidates += sorted(debian, key=lambda p: _version(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ProcessStartError(
        f"PostgreSQL's initdb and postgres were found neither on PATH nor in "
        f"{DEBIAN_ROOT}/*/bin; {INSTALL_HINT}"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def blocking_folder(path: Path, user: str) -> Path | None:
    """The first folder on the way to ``path`` that system user ``user`` may not enter
    (going by permission bits), or None if it can reach it."""
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    for folder in reversed(Path(path).resolve().parents):
        info = folder.stat()
        if info.st_uid == entry.pw_uid:
            searchable = info.st_mode & 0o100
        elif info.st_gid in groups:
            searchable = info.st_mode & 0o010
        else:
            searchable = info.st_mode & 0o001
        if not searchable:
            return folder
    return None


class PostgresServer(ChildProcess):
    """Debian's PostgreSQL on a free loopback port, its cluster and socket in ``run_dir``.

    The cluster is made on first start (superuser ``user``, password
    authentication, password kept in ``run_dir``); a later start on the same
    folder, by this object or another, reuses it and its data. ``stop`` sends
    SIGINT, PostgreSQL's fast shutdown (what ``pg_ctl stop -m fast`` sends), then
    ends what is left of the process group.
    """

    name = "postgres"

    def __init__(
        self,
        run_dir: Path | None = None,
        port: int | None = None,
        database: str = "smartlab",
        user: str = "smartlab",
    ) -> None:
        self._temporary = run_dir is None
        super().__init__(
            Path(tempfile.mkdtemp(prefix="smartlab-postgres-")) if run_dir is None else run_dir
        )
        for what, value in (("database", database), ("user", user)):
            if not IDENTIFIER.match(value):
                raise settings.ConfigurationError(
                    f"PostgreSQL {what} name {value!r}: expected lower-case letters, digits "
                    "and underscores, starting with a letter or underscore"
                )
        self.host = settings.DEFAULT_HOST
        self.port = port or free_port(self.host)
        self.database = database
        self.user = user
        self.os_user = SYSTEM_USER if os.geteuid() == 0 else None
        self.data_dir = self.run_dir / "data"
        self.socket_dir = self.run_dir / "socket"
        self._password_file = self.run_dir / "password"

    @property
    def password(self) -> str:
        """The superuser's password, made with the cluster (first start) and kept in the run
        folder (mode 0600)."""
        return self._password_file.read_text().strip()

    def uri_of(self, database: str) -> str:
        return (
            f"postgresql://{self.user}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{database}"
        )

    @property
    def uri(self) -> str:
        """The database as libpq, asyncpg and ``smartlab serve --catalog`` take it."""
        return self.uri_of(self.database)

    @property
    def display_uri(self) -> str:
        """:attr:`uri` with the password masked, to print."""
        return redact(self.uri)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        binaries = bin_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.os_user is not None:
            if blocked := blocking_folder(self.run_dir, self.os_user):
                raise ProcessStartError(
                    f"PostgreSQL runs as the system user {self.os_user!r} here (as root), which "
                    f"cannot reach {self.run_dir}: {blocked} is mode "
                    f"{blocked.stat().st_mode & 0o777:o}; use a folder it can reach, or "
                    "PostgresServer() without one (a temporary folder of its own)"
                )
            owner = as_user(self.os_user)
            for path in (self.run_dir, self.socket_dir):
                os.chown(path, owner["user"], owner["group"])
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(binaries)
        self._spawn(
            [
                str(binaries / "postgres"),
                "-D", str(self.data_dir),
                "-h", self.host,
                "-p", str(self.port),
                "-k", str(self.socket_dir),
            ],
            user=self.os_user,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failed(f"postgres exited with code {self.process.returncode}")
            error = connect_error(self.uri_of("postgres"), timeout=2.0)
            if error is None:
                self._create_database()
                return self
            time.sleep(0.1)
        raise self._failed(
            f"PostgreSQL did not answer at {self.host}:{self.port} within {timeout:.0f} s: {error}"
        )

    def _initdb(self, binaries: Path) -> None:
        """A new cluster: UTF-8, C locale (no dependence on the machine's locales), passwords."""
        password = secrets.token_hex(16)
        fd = os.open(self._password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if self.os_user is not None:
            owner = as_user(self.os_user)
            os.chown(self._password_file, owner["user"], owner["group"])
        cmd = [
            str(binaries / "initdb"),
            "-D", str(self.data_dir),
            "-U", self.user,
            f"--pwfile={self._password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir, **as_user(self.os_user)
            )
        if done.returncode != 0:
            self._password_file.unlink(missing_ok=True)
            raise ProcessStartError(
                f"initdb exited with code {done.returncode}; last lines of {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )

    def _create_database(self) -> None:
        import adbc_driver_postgresql.dbapi

        with (
            adbc_driver_postgresql.dbapi.connect(self.uri_of("postgres"), autocommit=True) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{self.database}"')

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop; a temporary run folder (none was given) goes too, with the cluster in it."""
        self.stop()
        if self._temporary:
            shutil.rmtree(self.run_dir, ignore_errors=True)
