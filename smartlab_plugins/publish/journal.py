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
        owner.json        pid, Tiled URI, start time (read as JSON, nothing else)
        released          present once its publisher closed with writes left over
        000000001.round   one round of writes each, in order
    <spool dir>/quarantine/
        <time>-<random>-000000007.round    rounds that could not be read, kept for a person

A round is a list of *records*: dicts whose values are JSON values, or, at the
top level of a record, a :class:`numpy.ndarray`, a :class:`pandas.DataFrame` or
a :class:`pyarrow.Table`. A round file is, in order:

- the 8 bytes ``SLROUND\\n``, then the length of the header (8 bytes, big-endian);
- the header, UTF-8 JSON: ``{"format": 1, "records": [...], "blobs": [...]}``, the
  records' JSON fields and, per array or table, its record, key, kind and its
  offset and length in the payload;
- the payload: arrays as ``.npy`` (``numpy.save``), tables and data frames as
  Arrow IPC streams; then the SHA-256 (32 bytes) of everything before it.

Safety: reading a round never runs code from the file (no pickle: arrays are
loaded with ``allow_pickle=False``), and anything wrong with one raises
:class:`CorruptRound`; the publisher then moves it to the quarantine folder
with :meth:`Journal.quarantine` and goes on. Another process's folder is
adopted only when it, its rounds and the spool folder belong to this user and
nobody else may write to them. Rounds of older versions (``*.pkl`` pickles) are
never loaded: they are moved to the quarantine folder with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
RELEASED_FILE = "released"
ROUND_SUFFIX = ".round"
QUARANTINE_DIR = "quarantine"

_PICKLE_SUFFIX = ".pkl"  # rounds of SmartLab before the format above: never loaded
_MAGIC = b"SLROUND\n"
_FORMAT = 1
_LENGTH = struct.Struct(">Q")
_DIGEST_SIZE = hashlib.sha256().digest_size
_OWNER_MAX_BYTES = 64 * 1024
_NDARRAY, _DATAFRAME, _ARROW = "ndarray", "dataframe", "arrow"


class JournalError(OSError):
    """The spool folder cannot hold a journal (the message names the folder)."""


class JournalFull(OSError):
    """A round could not be stored because the disk (or the user's quota) is full."""


class CorruptRound(Exception):
    """A round file that cannot be read: truncated, altered or not a round at all."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal
    return stat_line.rsplit(")", 1)[-1].split()[0] != "Z"


class Journal:
    """The journal folder of one publisher: add rounds, remove them once written."""

    def __init__(self, root: Path, tiled_uri: str) -> None:
        self.root = Path(root)
        self.dir = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.dir.mkdir(mode=0o700)
            _write_owner(self.dir, tiled_uri)
        except OSError as exc:
            raise JournalError(
                exc.errno, f"cannot keep a results journal in {self.root}: {exc.strerror or exc}"
            ) from exc
        self.tiled_uri = tiled_uri
        self._adopted: list[Path] = []
        self._count = 0

    def add(self, records: list[dict[str, Any]]) -> Path:
        """Store one round; returns its file. Atomic: a reader sees all of it or nothing.

        Raises TypeError, before anything is written, for a value a round cannot
        hold; :class:`JournalFull` when the disk is full, and another OSError when
        the file cannot be written otherwise. Either way no partial file is left.
        """
        data = _encode(records)
        self._count += 1
        path = self.dir / f"{self._count:09d}{ROUND_SUFFIX}"
        partial = path.with_suffix(".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        except OSError as exc:
            message = f"cannot store a round of results in {self.dir}: {exc.strerror or exc}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JournalFull(exc.errno, message) from exc
            raise OSError(exc.errno, message) from exc
        return path

    def adopt_orphans(self) -> list[Path]:
        """Claim the rounds that publishers to the same server left behind, oldest first.

        A folder is left behind when its publisher died, or closed while Tiled
        was unreachable. Claiming renames it, which is atomic: of two
        publishers starting together, one gets it. Folders that are not safely
        this user's own are left alone (see :func:`_orphan_folders`).
        """
        rounds: list[Path] = []
        for folder in _orphan_folders(self.root, self.tiled_uri):
            claimed = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(folder, claimed)
            except OSError:
                continue
            _write_owner(claimed, self.tiled_uri)
            (claimed / RELEASED_FILE).unlink(missing_ok=True)
            self._set_aside_pickles(claimed)
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
        self._tidy(path.parent)

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a round that cannot be read out of the way, for a person to look at.

        The round goes to ``<spool dir>/quarantine/`` under a new, unique name
        that ends with its own; returns where it went. The caller goes on with
        the next round.
        """
        folder = self._quarantine_dir()
        target = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-{path.name}"
        os.rename(path, target)
        logger.error("round %s cannot be read (%s); moved it to %s", path, reason, target)
        self._tidy(path.parent)
        return target

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

    def _tidy(self, folder: Path) -> None:
        """Delete an adopted folder once it holds no rounds."""
        if folder != self.dir and not rounds_in(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if folder in self._adopted:
                self._adopted.remove(folder)

    def _quarantine_dir(self) -> Path:
        folder = self.root / QUARANTINE_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        reason = _unsafe(os.lstat(folder), "folder")
        if reason:
            raise JournalError(errno.EPERM, f"cannot quarantine rounds in {folder}: {reason}")
        return folder

    def _set_aside_pickles(self, folder: Path) -> None:
        """Move the rounds an older SmartLab pickled out of the way: they are never loaded."""
        pickles = sorted(folder.glob(f"*{_PICKLE_SUFFIX}"))
        if not pickles:
            return
        quarantine = self._quarantine_dir()
        for path in pickles:
            os.rename(path, quarantine / f"{folder.name}-{uuid.uuid4().hex[:8]}-{path.name}")
        logger.warning(
            "ignoring %d round(s) in %s stored as pickles by an older SmartLab (never loaded, "
            "they could run code); moved them to %s",
            len(pickles),
            folder,
            quarantine,
        )


def load(path: Path) -> list[dict[str, Any]]:
    """The records of one stored round.

    Raises :class:`CorruptRound` for anything wrong with the file's content,
    OSError only when it cannot be read at all.
    """
    data = Path(path).read_bytes()
    start = len(_MAGIC) + _LENGTH.size
    if len(data) < start + _DIGEST_SIZE:
        raise CorruptRound(path, f"truncated: {len(data)} bytes, shorter than any round")
    if not data.startswith(_MAGIC):
        raise CorruptRound(path, "not a SmartLab round (it does not start with SLROUND)")
    body = memoryview(data)[:-_DIGEST_SIZE]
    if hashlib.sha256(body).digest() != data[-_DIGEST_SIZE:]:
        raise CorruptRound(path, "checksum mismatch: the file is truncated or altered")
    (size,) = _LENGTH.unpack_from(data, len(_MAGIC))
    if start + size > len(body):
        raise CorruptRound(path, f"header of {size} bytes runs past the end of the file")
    try:
        header = json.loads(bytes(body[start : start + size]))
    except ValueError as exc:
        raise CorruptRound(path, f"header is not JSON: {exc}") from exc
    version = header.get("format") if isinstance(header, dict) else None
    if type(version) is not int or version != _FORMAT:
        raise CorruptRound(path, f"unknown format version {version!r}, expected {_FORMAT}")
    try:
        return _decode(header, body[start + size :])
    except Exception as exc:  # whatever the decoders raise, the file is at fault
        raise CorruptRound(path, f"cannot decode: {type(exc).__name__}: {exc}") from exc


def rounds_in(folder: Path) -> list[Path]:
    """The round files of a journal folder, in the order they were added."""
    return sorted(folder.glob(f"*{ROUND_SUFFIX}"))


def _orphan_folders(root: Path, tiled_uri: str) -> list[Path]:
    """Folders of publishers to ``tiled_uri`` that died or were released, oldest first.

    Only folders that are safely this user's are considered: a real directory
    (not a symbolic link) owned by the user and writable by nobody else, whose
    owner file and rounds are regular files owned by the user, in a spool
    folder that is the user's and writable by nobody else. Anything else is
    logged as an error and left alone.
    """
    try:
        reason = _unsafe(os.stat(root), "folder")
        entries = list(root.iterdir())
    except OSError as exc:
        reason, entries = str(exc), []
    if reason:
        logger.error("not adopting any results journal in %s: %s", root, reason)
        return []
    found: list[tuple[float, str]] = []
    for folder in entries:
        if folder.name == QUARANTINE_DIR:
            continue
        try:
            info = os.lstat(folder)
        except FileNotFoundError:  # claimed by another publisher meanwhile
            continue
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            continue  # a stray file, not a journal
        reason = _unsafe(info, "folder") or _unsafe_files(folder)
        if reason:
            logger.error("not adopting results journal folder %s: %s", folder, reason)
            continue
        owner = _read_owner(folder)
        if owner is None or owner.get("tiled_uri") != tiled_uri:
            continue
        pid, started = owner.get("pid"), owner.get("started", 0.0)
        if type(pid) is not int or pid <= 0 or not isinstance(started, (int, float)):
            logger.error("not adopting results journal folder %s: malformed %s", folder, OWNER_FILE)
            continue
        if (folder / RELEASED_FILE).exists() or not _pid_alive(pid):
            found.append((float(started), folder.name))
    return [root / name for _, name in sorted(found)]


def _unsafe(info: os.stat_result, kind: str) -> str | None:
    """Why what ``info`` describes is not safely this user's ``kind`` ("folder", "file")."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    is_kind = stat.S_ISDIR if kind == "folder" else stat.S_ISREG
    if not is_kind(info.st_mode):
        return f"it is not a {'folder' if kind == 'folder' else 'regular file'}"
    if info.st_uid != os.getuid():
        return f"it belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others may write to it (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _unsafe_files(folder: Path) -> str | None:
    """Why the owner file or a round in ``folder`` is not safely this user's, or None."""
    for path in [folder / OWNER_FILE, *rounds_in(folder)]:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        reason = _unsafe(info, "file")
        if reason:
            return f"{path.name}: {reason}"
    return None


def _read_owner(folder: Path) -> dict[str, Any] | None:
    """The JSON content of a folder's owner file, or None when it has none that is readable."""
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            owner = json.loads(f.read(_OWNER_MAX_BYTES))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _write_owner(folder: Path, tiled_uri: str) -> None:
    owner = {"pid": os.getpid(), "tiled_uri": tiled_uri, "started": time.time()}
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(folder / OWNER_FILE, flags, 0o600), "w") as f:
        f.write(json.dumps(owner))


def _encode(records: list[dict[str, Any]]) -> bytes:
    """The bytes of a round file (see the module's docstring); TypeError for what it cannot hold."""
    plain: list[dict[str, Any]] = []
    blobs: list[dict[str, Any]] = []
    payload = io.BytesIO()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"record {index}: expected a dict, got {type(record).__name__}")
        fields: dict[str, Any] = {}
        for key, value in record.items():
            where = f"record {index}, key {key!r}"
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, got {type(key).__name__}")
            kind = _blob_kind(value)
            if kind is None:
                fields[key] = _json_value(value, where)
                continue
            offset = payload.tell()
            _write_blob(payload, kind, value, where)
            blobs.append(
                {
                    "record": index,
                    "key": key,
                    "kind": kind,
                    "offset": offset,
                    "length": payload.tell() - offset,
                }
            )
        plain.append(fields)
    header = json.dumps({"format": _FORMAT, "records": plain, "blobs": blobs}).encode()
    body = b"".join([_MAGIC, _LENGTH.pack(len(header)), header, payload.getvalue()])
    return body + hashlib.sha256(body).digest()


def _blob_kind(value: Any) -> str | None:
    if isinstance(value, np.ndarray):
        return _NDARRAY
    if isinstance(value, pd.DataFrame):
        return _DATAFRAME
    if isinstance(value, pa.Table):
        return _ARROW
    return None


def _write_blob(out: io.BytesIO, kind: str, value: Any, where: str) -> None:
    if kind == _NDARRAY:
        if value.dtype.hasobject:
            raise TypeError(
                f"{where}: arrays of Python objects cannot be stored, got {value.dtype}"
            )
        np.save(out, value, allow_pickle=False)
        return
    if kind == _DATAFRAME:
        try:
            value = pa.Table.from_pandas(value, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise TypeError(f"{where}: this DataFrame cannot be stored: {exc}") from exc
    with pa.ipc.new_stream(out, value.schema) as writer:
        writer.write_table(value)


def _json_value(value: Any, where: str) -> Any:
    """``value`` as JSON gives it back (tuples become lists); TypeError if it has no JSON form."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where}: nested keys must be str, got {type(key).__name__}")
        return {key: _json_value(item, f"{where}[{key!r}]") for key, item in value.items()}
    if _blob_kind(value):
        raise TypeError(f"{where}: arrays and tables may only be values of a record's own keys")
    raise TypeError(
        f"{where}: expected a JSON value, an ndarray, DataFrame or pyarrow.Table, "
        f"got {type(value).__name__}"
    )


def _decode(header: dict[str, Any], payload: memoryview) -> list[dict[str, Any]]:
    """The records a header and its payload describe; any exception means a bad file."""
    records = header["records"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("'records' is not a list of objects")
    for blob in header["blobs"]:
        record, key, kind = blob["record"], blob["key"], blob["kind"]
        offset, length = blob["offset"], blob["length"]
        if not all(type(n) is int and n >= 0 for n in (record, offset, length)):
            raise ValueError(f"bad blob entry {blob!r}")
        if record >= len(records) or offset + length > len(payload) or not isinstance(key, str):
            raise ValueError(f"blob entry {blob!r} points outside the round")
        data = payload[offset : offset + length]
        if kind == _NDARRAY:
            stream = io.BytesIO(data)
            value: Any = np.lib.format.read_array(stream, allow_pickle=False)
            if stream.tell() != length:
                raise ValueError(f"array {key!r} of record {record} has trailing bytes")
        elif kind in (_ARROW, _DATAFRAME):
            value = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            if kind == _DATAFRAME:
                value = value.to_pandas()
        else:
            raise ValueError(f"unknown kind of blob {kind!r}")
        records[record][key] = value
    return records
