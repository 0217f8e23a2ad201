"""Detector files named by documents: where they may be read from, how much, and how.

Area detectors write frames to files and name them in ``resource`` /
``stream_resource`` documents. Those documents decide which file the worker
opens, and what it reads is analysed and published, so every read is checked
first by a :class:`ReadPolicy`:

- **Data roots.** The path is resolved (symlinks, ``..``) and must lie under
  one of the configured roots. ``roots=None`` (the in-process default, whose
  documents come from the user's own RunEngine) allows any path this process
  can read; a worker fed over a network (``smartlab worker``) reads nothing
  until roots are configured.
- **Never a Tiled server's own folder.** A folder holding a SmartLab / Tiled
  server's catalog or API key (one of :data:`SERVER_MARKERS`) is never read,
  whatever the roots say, except its ``external/`` area for detector files.
- **A byte budget per event.** The declared shape times the item size must fit
  in ``max_event_bytes`` *before* anything is read, and the file's dataset must
  have the declared frame shape, so a small compressed file that declares a
  huge array (a decompression bomb) is refused, not read.

Errors say which field, which path and what we found wrong, in words of ours;
they never carry the file's content (no exception text from a parser is passed
on, only its type).

HDF5 files (areaDetector's ``AD_HDF5`` and ophyd-async's writers) are read
here with h5py in SWMR mode, sized to the file as it is *now*, so frames are
read while the detector is still writing; a frame not yet on disk raises
:class:`FramesNotWritten`, and the caller waits for it. Other formats go
through the tiled adapter of bluesky-tiled-plugins' consolidator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

#: Per-event budget by default: an Eiger2 X 16M frame at 32 bits is 73 MB; three fit.
DEFAULT_MAX_EVENT_BYTES = 256 * 2**20
#: Files whose presence marks a folder as a Tiled server's own (catalog, tables, API key).
SERVER_MARKERS = ("api_key", "catalog.db", "tables.db")
#: The one place inside a server folder where detector files may live (see server.py).
EXTERNAL_SUBDIR = "external"
HDF5_MIMETYPE = "application/x-hdf5"


class ExternalDataError(Exception):
    """External data that cannot be used; the message is ours and names no file content."""


class ExternalDataRefused(ExternalDataError):
    """A read the policy does not allow (outside the roots, a server folder, over budget)."""


class FramesNotWritten(ExternalDataError):
    """The file holds fewer frames than the documents refer to, yet: wait and try again."""

    def __init__(self, message: str, available: int) -> None:
        super().__init__(message)
        #: Rows (events) of the requested range that are on disk now, from its start.
        self.available = available


def path_of(uri: str) -> Path:
    """The local path a ``file:`` URI (or a plain path) names, not yet resolved."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path if parsed.scheme else uri))
    raise ExternalDataRefused(f"only local files can be read, not {parsed.scheme!r} URIs")


@dataclass(frozen=True)
class ReadPolicy:
    """Which files the worker may read for analysis and register for the raw run."""

    #: Resolved folders files must lie under; None: anywhere but a server's own folder.
    roots: tuple[Path, ...] | None = None
    #: Largest declared size of one event's external data, in bytes.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES

    @classmethod
    def build(
        cls, roots: Iterable[str | os.PathLike[str]] | None, max_event_bytes: int | None = None
    ) -> ReadPolicy:
        """A policy from settings: ``roots`` resolved now (None keeps the open default)."""
        budget = DEFAULT_MAX_EVENT_BYTES if max_event_bytes is None else int(max_event_bytes)
        if budget <= 0:
            raise ValueError(f"max_event_bytes must be positive, got {budget}")
        resolved = None if roots is None else tuple(Path(r).expanduser().resolve() for r in roots)
        return cls(resolved, budget)

    def describe(self) -> str:
        """The roots in one line, for messages."""
        if self.roots is None:
            return "any folder (no data roots set)"
        if not self.roots:
            return "no folder (no data roots configured)"
        return ", ".join(str(r) for r in self.roots)

    def check_path(self, uri: str, field: str) -> Path:
        """The resolved path of ``uri`` if the policy allows reading it; else raise."""
        try:
            path = path_of(uri).expanduser()
        except ExternalDataRefused as refused:
            raise ExternalDataRefused(f"field {field!r}: {refused}") from None
        if not path.is_absolute():
            raise ExternalDataRefused(f"field {field!r}: {path} is not an absolute path")
        resolved = path.resolve()
        server = server_folder(resolved)
        if server is not None:
            raise ExternalDataRefused(
                f"field {field!r}: {path} is inside a Tiled server's own folder ({server}), "
                "which is never read as detector data"
            )
        if self.roots is not None and not any(resolved.is_relative_to(r) for r in self.roots):
            shown = f"{path} (resolved: {resolved})" if resolved != path else str(path)
            raise ExternalDataRefused(
                f"field {field!r}: {shown} is outside the data roots ({self.describe()}); "
                "add its folder with SmartLab(data_roots=[...]), smartlab worker --data-root, "
                "or SMARTLAB_DATA_ROOTS"
            )
        return resolved

    def check_budget(self, field: str, shape: Sequence[int], dtype: np.dtype) -> None:
        """Raise unless one event of ``shape`` and ``dtype`` fits in the byte budget."""
        size = math.prod(int(s) for s in shape) * dtype.itemsize
        if size > self.max_event_bytes:
            raise ExternalDataRefused(
                f"field {field!r}: one event declares {tuple(shape)} x {dtype.itemsize} bytes "
                f"= {size / 2**20:.1f} MiB, over the per-event budget of "
                f"{self.max_event_bytes / 2**20:.1f} MiB (max_event_bytes); not read"
            )


def server_folder(path: Path) -> Path | None:
    """The Tiled server folder ``path`` lies in (outside its ``external/`` area), or None.

    A folder is a server's if it holds one of :data:`SERVER_MARKERS`; the
    marker files themselves are always refused.
    """
    if path.name in SERVER_MARKERS:
        return path.parent
    for parent in path.parents:
        if any((parent / marker).exists() for marker in SERVER_MARKERS):
            inside = path.relative_to(parent).parts
            if inside and inside[0] == EXTERNAL_SUBDIR and len(inside) > 1:
                return None
            return parent
    return None


def declared_dtype(data_key: dict[str, Any]) -> np.dtype:
    """The numpy dtype a descriptor's data key declares (``dtype_numpy``), float64 if none."""
    described = data_key.get("dtype_numpy")
    try:
        return np.dtype(described) if isinstance(described, str) and described else np.dtype("f8")
    except TypeError:
        return np.dtype("f8")


def read_hdf5_rows(
    path: Path,
    dataset: str,
    start: int,
    stop: int,
    row_shape: tuple[int, ...],
    field: str,
    policy: ReadPolicy,
) -> np.ndarray:
    """Rows ``start:stop`` of an HDF5 dataset of events, each of ``row_shape``.

    The dataset holds frames along axis 0; an event is one frame (``row_shape``
    equal to the frame shape) or ``N`` frames (``row_shape == (N, *frame)``).
    The file is opened for each read, in SWMR mode when it was written so, and
    sized as it is now. Raises :class:`FramesNotWritten` when the file does not
    yet hold every frame asked for, :class:`ExternalDataError` when it cannot
    be read as declared.
    """
    import h5py

    if not path.exists():
        raise FramesNotWritten(f"field {field!r}: {path} does not exist yet", 0)
    try:
        handle = _open_hdf5(h5py, path)
    except OSError as exc:
        raise ExternalDataError(
            f"field {field!r}: {path} could not be opened as HDF5 ({type(exc).__name__})"
        ) from None
    with handle:
        node = handle.get(dataset)
        if not isinstance(node, h5py.Dataset):
            raise ExternalDataError(f"field {field!r}: {path} has no dataset {dataset!r}")
        if handle.swmr_mode:
            node.refresh()
        frame = tuple(node.shape[1:])
        if row_shape == frame:
            per_row = 1
        elif len(row_shape) == len(frame) + 1 and tuple(row_shape[1:]) == frame:
            per_row = int(row_shape[0])
        elif row_shape in ((), (1,)) and frame == ():
            per_row = 1
        else:
            raise ExternalDataError(
                f"field {field!r}: {path}:{dataset} holds frames of shape {frame}, "
                f"the descriptor declares {row_shape} per event"
            )
        policy.check_budget(field, (per_row, *frame), node.dtype)
        on_disk = int(node.shape[0]) // per_row if node.ndim else 1
        if on_disk < stop:
            raise FramesNotWritten(
                f"field {field!r}: {path} holds {on_disk} event(s) of frames, "
                f"event index {stop - 1} is not written yet",
                max(0, on_disk - start),
            )
        try:
            block = np.asarray(node[start * per_row : stop * per_row])
        except (OSError, ValueError) as exc:
            raise ExternalDataError(
                f"field {field!r}: frames {start}..{stop - 1} of {path} could not be read "
                f"({type(exc).__name__})"
            ) from None
    return block.reshape((stop - start, *row_shape)) if row_shape else block


#: How an HDF5 file is opened, first that works: SWMR as its writer allows (within the
#: writer's own process the locking flags must match the writer's), then without locks.
HDF5_OPENINGS: tuple[dict[str, Any], ...] = (
    {"swmr": True},
    {"swmr": True, "locking": False},
    {"locking": False},
)


def _open_hdf5(h5py: Any, path: Path) -> Any:
    """Open ``path`` read-only, in SWMR mode if its writer allows it."""
    for options in HDF5_OPENINGS[:-1]:
        try:
            return h5py.File(path, "r", **options)
        except OSError:
            continue
    return h5py.File(path, "r", **HDF5_OPENINGS[-1])
