"""A local, on-disk journal of writes to Tiled that have not been confirmed yet.

The publisher decides every key of a round of writes before it sends any of
them, and puts the round here first. A round leaves the journal only once
Tiled has all of it, so what was written is never lost to a Tiled outage, a
full queue or a killed process: a later publisher adopts the journal of a
process that died (or of one that closed while Tiled was away) and replays it
in order. Replaying is harmless because every key was fixed beforehand (see
:mod:`smartlab_plugins.publish`).

Layout, one folder per publisher (user-only permissions)::

    <spool dir>/<pid>-<random>/
        owner.json        pid, Tiled URI, start time
        released          present once its publisher closed with writes left over
        000000001.pkl     one round of writes each, in order

Rounds are pickles: they are written and read only by SmartLab under the
user's own account, in folders nobody else can open.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
RELEASED_FILE = "released"
ROUND_SUFFIX = ".pkl"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Journal:
    """The journal folder of one publisher: add rounds, remove them once written."""

    def __init__(self, root: Path, tiled_uri: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(mode=0o700)
        owner = {"pid": os.getpid(), "tiled_uri": tiled_uri, "started": time.time()}
        (self.dir / OWNER_FILE).write_text(json.dumps(owner))
        self.tiled_uri = tiled_uri
        self._adopted: list[Path] = []
        self._count = 0

    def add(self, writes: list[Any]) -> Path:
        """Store one round; returns its file. Atomic: a reader sees all of it or nothing."""
        self._count += 1
        path = self.dir / f"{self._count:09d}{ROUND_SUFFIX}"
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(writes, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)
        return path

    def adopt_orphans(self) -> list[Path]:
        """Claim the rounds that publishers to the same server left behind, oldest first.

        A folder is left behind when its publisher died, or closed while Tiled
        was unreachable. Claiming renames it, which is atomic: of two
        publishers starting together, one gets it.
        """
        rounds: list[Path] = []
        for folder in _orphan_folders(self.root, self.tiled_uri):
            claimed = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(folder, claimed)
            except OSError:
                continue
            owner = {"pid": os.getpid(), "tiled_uri": self.tiled_uri, "started": time.time()}
            (claimed / OWNER_FILE).write_text(json.dumps(owner))
            (claimed / RELEASED_FILE).unlink(missing_ok=True)
            found = rounds_in(claimed)
            if found:
                self._adopted.append(claimed)
                logger.warning(
                    "publishing %d round(s) of results an earlier SmartLab process left unwritten",
                    len(found),
                )
                rounds.extend(found)
            else:
                shutil.rmtree(claimed, ignore_errors=True)
        return rounds

    def remove(self, path: Path) -> None:
        """Forget a round Tiled has in full (and an adopted folder once it is empty)."""
        path.unlink(missing_ok=True)
        folder = path.parent
        if folder != self.dir and not rounds_in(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if folder in self._adopted:
                self._adopted.remove(folder)

    def release(self) -> int:
        """Leave what is unwritten for a later publisher; returns how many rounds that is."""
        left = 0
        for folder in [self.dir, *self._adopted]:
            count = len(rounds_in(folder))
            left += count
            if count:
                (folder / RELEASED_FILE).touch()
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return left


def load(path: Path) -> list[Any]:
    """The writes of one stored round."""
    with open(path, "rb") as f:
        return pickle.load(f)


def rounds_in(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{ROUND_SUFFIX}"))


def _orphan_folders(root: Path, tiled_uri: str) -> list[Path]:
    """Folders of publishers to ``tiled_uri`` that died or were released, oldest first."""
    found: list[tuple[float, str]] = []
    for folder in root.iterdir():
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner.get("tiled_uri") != tiled_uri:
            continue
        if (folder / RELEASED_FILE).exists() or not _pid_alive(int(owner.get("pid", -1))):
            found.append((float(owner.get("started", 0.0)), folder.name))
    return [root / name for _, name in sorted(found)]
