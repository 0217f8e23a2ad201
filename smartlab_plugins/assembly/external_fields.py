"""One run's file-backed fields: where each event's frames are, and reading them into rows.

``stream_resource`` documents name a file; ``stream_datum`` documents say
which events' frames it holds (after bluesky-tiled-plugins' ``RunNormalizer``
turned ophyd's ``resource``/``datum`` into these too). :class:`ExternalFields`
keeps, per descriptor and field, the file and index of every event's frames,
checks each file against the :class:`~.external.ReadPolicy` once, and fills a
list of rows with their frames, reading each frame once, in blocks, while the
file is still growing.

What a read cannot do costs only that field of those events: the caller is
told which rows lost which field and why, and keeps the rest of each row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from bluesky_tiled_plugins.writing.consolidators import ConsolidatorBase, consolidator_factory

from .external import (
    HDF5_MIMETYPE,
    ExternalDataError,
    ExternalDataRefused,
    FramesNotWritten,
    ReadPolicy,
    declared_dtype,
    read_hdf5_rows,
)


class Row(Protocol):
    """What :meth:`ExternalFields.fill` needs of a pending event."""

    seq_num: int
    data: dict[str, Any]


#: Most events read from a file at once (a block of frames in memory).
MAX_ROWS_PER_READ = 256
#: Called with the rows that lost a field, the field, and why (a message of ours).
LostField = Callable[[list[Any], str, str], None]


@dataclass
class _Source:
    """One stream_resource as a source of one field's frames."""

    field: str
    consolidator: ConsolidatorBase
    declared: tuple[int, ...]
    path: Path | None = None
    refused: str | None = None
    dataset: str | None = None  # set: read with h5py, else through the tiled adapter
    checked_assets: int = 0  # files of the consolidator already checked against the policy

    def read(self, start: int, stop: int, policy: ReadPolicy) -> np.ndarray:
        """Rows ``start:stop`` of this source, each of the consolidator's datum shape."""
        shape = tuple(self.consolidator.datum_shape)
        if self.dataset is not None:
            return read_hdf5_rows(self.path, self.dataset, start, stop, shape, self.field, policy)
        try:
            adapter = self.consolidator.init_adapter()
            return np.asarray(adapter.read(slice=(slice(start, stop),)))
        except Exception as exc:  # a parser's message may quote the file: keep only its type
            raise ExternalDataError(
                f"field {self.field!r}: {self.path} could not be read as "
                f"{self.consolidator.mimetype} ({type(exc).__name__})"
            ) from None


@dataclass
class _Field:
    """Where each event of one descriptor's field has its frames: seq_num -> (source, index)."""

    where: dict[int, tuple[str, int]] = field(default_factory=dict)


class ExternalFields:
    """The file-backed fields of one run, read under a policy."""

    def __init__(self, policy: ReadPolicy) -> None:
        self.policy = policy
        self._resources: dict[str, Mapping[str, Any]] = {}
        self._sources: dict[str, _Source] = {}
        self._fields: dict[tuple[str, str], _Field] = {}
        #: Set by :meth:`fill` when it stopped at a frame the detector has not written yet.
        self.waiting_for_frames = False

    def add_resource(self, doc: Mapping[str, Any]) -> None:
        """Note a stream_resource; it is checked when its first stream_datum comes."""
        self._resources[doc["uid"]] = doc

    def knows_resource(self, uid: str) -> bool:
        return uid in self._resources

    def add_datum(self, doc: Mapping[str, Any], descriptor: Mapping[str, Any]) -> str | None:
        """Note which events a stream_datum covers; returns why its file is refused, once.

        The returned message (None if the file is allowed, or was already
        reported) is for the caller to report as a problem of the run.
        """
        sres_uid = doc["stream_resource"]
        refused = None
        source = self._sources.get(sres_uid)
        if source is None:
            source = self._source(self._resources[sres_uid], descriptor)
            self._sources[sres_uid] = source
            refused = source.refused
        if source.dataset is None and source.refused is None:
            source.consolidator.consume_stream_datum(doc)
            refused = self._check_new_files(source) or refused
        seq, idx = doc["seq_nums"], doc["indices"]
        where = self._fields.setdefault((doc["descriptor"], source.field), _Field()).where
        for seq_num, index in zip(
            range(seq["start"], seq["stop"]), range(idx["start"], idx["stop"]), strict=False
        ):
            where[seq_num] = (sres_uid, index)
        return refused

    def has_frames(self, descriptor_uid: str, key: str, seq_num: int) -> bool:
        """Whether a datum for this event's field has come (its frames may still be on the way)."""
        known = self._fields.get((descriptor_uid, key))
        return known is not None and seq_num in known.where

    def fill(
        self, descriptor_uid: str, key: str, rows: list[Row], final: bool, lost: LostField
    ) -> int:
        """Put ``key``'s frames into the leading rows; returns how many rows are settled.

        A row is settled when its frames are in ``row.data[key]`` or the field
        is lost for it (``lost`` is told). Unless ``final``, reading stops at
        the first frame not yet on disk, and the rows from there on are left
        for a later call; with ``final`` (the stop document has come) those
        frames, and frames never referenced by a datum, are lost instead.
        """
        known = self._fields.get((descriptor_uid, key), _Field()).where
        self.waiting_for_frames = False
        done = 0
        for sres_uid, group in _groups(rows, known):
            if sres_uid is None:
                lost(group, key, "no datum for it arrived before the stop document")
                done += len(group)
                continue
            source = self._sources[sres_uid]
            if source.refused is not None:
                lost(group, key, source.refused)
                done += len(group)
                continue
            filled = self._read_group(source, group, known, key, final, lost)
            done += filled
            if filled < len(group):
                self.waiting_for_frames = True
                return done
        return done

    def _read_group(
        self,
        source: _Source,
        group: list[Row],
        known: Mapping[int, tuple[str, int]],
        key: str,
        final: bool,
        lost: LostField,
    ) -> int:
        """Read one source's frames for ``group``; returns the rows settled."""
        indices = [known[row.seq_num][1] for row in group]
        lo, hi = min(indices), max(indices) + 1
        try:
            block = source.read(lo, hi, self.policy)
            count = len(group)
        except FramesNotWritten as missing:
            available = lo + missing.available
            count = next((i for i, index in enumerate(indices) if index >= available), len(group))
            if final:
                if count:
                    self._read_group(source, group[:count], known, key, final, lost)
                lost(group[count:], key, f"{missing}; the stop document came first")
                return len(group)
            if not count:
                return 0
            block = source.read(lo, max(indices[:count]) + 1, self.policy)
        except ExternalDataError as exc:
            lost(group, key, str(exc))
            return len(group)
        for row, index in zip(group[:count], indices[:count], strict=True):
            value = block[index - lo]
            if source.declared and value.size == int(np.prod(source.declared)):
                value = value.reshape(source.declared)
            row.data[key] = value
        return count

    def _check_new_files(self, source: _Source) -> str | None:
        """Check the files a datum added (one file per frame); why one is refused, or None."""
        assets = source.consolidator.assets
        for asset in assets[source.checked_assets :]:
            try:
                self.policy.check_path(asset.data_uri, source.field)
            except ExternalDataRefused as refused:
                source.refused = str(refused)
                return source.refused
        source.checked_assets = len(assets)
        return None

    def _source(self, sres: Mapping[str, Any], descriptor: Mapping[str, Any]) -> _Source:
        """A source for ``sres``: its field, shape, and whether the policy lets it be read."""
        consolidator = consolidator_factory(sres, descriptor)
        data_key = descriptor["data_keys"][consolidator.data_key]
        declared = tuple(int(s) for s in data_key.get("shape") or ())
        source = _Source(consolidator.data_key, consolidator, declared)
        try:
            source.path = self.policy.check_path(consolidator.uri, source.field)
            self.policy.check_budget(
                source.field, consolidator.datum_shape, declared_dtype(data_key)
            )
        except ExternalDataRefused as refused:
            source.refused = str(refused)
            return source
        parameters = sres.get("parameters", {})
        if consolidator.mimetype == HDF5_MIMETYPE and not parameters.get("template"):
            source.dataset = parameters.get("dataset") or "/entry/data/data"
        else:  # through the adapter; one file per frame is checked as each datum names it
            self._check_new_files(source)
        return source


def _groups(
    rows: list[Row], known: Mapping[int, tuple[str, int]]
) -> list[tuple[str | None, list[Row]]]:
    """Consecutive rows by the source of their frames (None: no datum came for them)."""
    groups: list[tuple[str | None, list[Row]]] = []
    for row in rows:
        sres_uid = known[row.seq_num][0] if row.seq_num in known else None
        if groups and groups[-1][0] == sres_uid and len(groups[-1][1]) < MAX_ROWS_PER_READ:
            groups[-1][1].append(row)
        else:
            groups.append((sres_uid, [row]))
    return groups
