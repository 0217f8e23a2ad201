"""Servers SmartLab starts for itself (Redis, the RE Manager, PostgreSQL) as child processes.

Each runs in its own session with its output in a log file in its run folder,
so that stopping it also stops whatever it started, and a server that does not
come up is reported with the end of its log rather than a bare exit code.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType


class ProcessStartError(RuntimeError):
    """A server did not come up; the message says why and where its log is."""


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, or ``(no log)`` if it cannot be read."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def as_user(name: str | None) -> dict[str, object]:
    """``subprocess`` arguments that run a child as system user ``name`` (None: as this one).

    PostgreSQL refuses to run as root, so where SmartLab runs as root (a CI
    container) its servers run as the system user Debian's package made for them.
    """
    if name is None:
        return {}
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ProcessStartError(f"there is no system user {name!r} to run the server as") from None
    return {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(name, entry.pw_gid),
    }


class ChildProcess:
    """A child process in its own session (so stopping it also stops what it started)."""

    name = "process"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.process: subprocess.Popen | None = None
        self.log_path = self.run_dir / f"{self.name}.log"

    def _spawn(
        self, cmd: list[str], env: Mapping[str, str] | None = None, user: str | None = None
    ) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.run_dir,
            start_new_session=True,
            **as_user(user),
        )
        log.close()

    def _failed(self, what: str) -> ProcessStartError:
        self.stop()
        tail = log_tail(self.log_path)
        return ProcessStartError(f"{what}; last lines of {self.log_path}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to end (SIGINT), then its whole session (SIGTERM, SIGKILL)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # children left behind (the RE worker, SmartLab's)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.5)
        process.wait(timeout=timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
