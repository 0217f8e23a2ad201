"""Documents in, batches out: the analysis side of the SmartLab callback.

:class:`BatchAssembler` takes the documents of any number of runs, checks
them, reads externally stored data (area-detector frames written to files),
and groups the events of each stream into :class:`RawBatch` es for the worker.
It runs on the analysis worker, never on the RunEngine thread, and does no
analysis itself.

Each run's documents first pass through bluesky-tiled-plugins'
``RunNormalizer``, which validates them against the event-model schemas and
turns ``resource``/``datum`` into ``stream_resource``/``stream_datum``, so old
(ophyd) and new (ophyd-async) detectors arrive the same way; the library's
consolidators then read the referenced files.
"""

from __future__ import annotations

import logging
import reprlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import numpy as np
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
from event_model import DocumentNames, DocumentRouter, schema_validators

from smartlab_plugins.run_index import short_uid

from .external import ExternalDataRefused, ReadPolicy, declared_dtype
from .external_fields import ExternalFields

logger = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset(n.name for n in DocumentNames)
#: Document types event-model still names but no longer emits; nothing here reads them.
DEPRECATED_NAMES = frozenset({"bulk_events", "bulk_datum"})
#: Documents whose ``uid`` later documents refer to; a second one with the same uid is refused.
PARENT_NAMES = ("descriptor", "resource", "stream_resource")
#: The longest reason a problem carries: a hostile document must not make a huge message.
MAX_REASON = 500
INT64 = (-(2**63), 2**63 - 1)
#: Seconds a run's stop document waits for frames a datum announced but the file lacks yet.
STOP_WAIT = 5.0
#: Runs open at once before the oldest is closed: a start whose stop never comes must not
#: hold its run's state for the rest of the session (a RunEngine has one or two open).
MAX_OPEN_RUNS = 64
#: Keys the run router needs in each document to know where it belongs.
ROUTING_KEYS: Mapping[str, tuple[str, ...]] = {
    "start": ("uid",),
    "stop": ("run_start",),
    "descriptor": ("uid", "run_start"),
    "event": ("descriptor",),
    "event_page": ("descriptor",),
    "resource": ("uid", "run_start"),
    "datum": ("resource",),
    "datum_page": ("resource",),
    "stream_resource": ("uid", "run_start"),
    "stream_datum": ("descriptor",),
}


@dataclass(frozen=True)
class DocumentProblem:
    """A document, or an event in one, that could not be used, and why."""

    document: str
    reason: str
    run_uid: str | None = None
    stream: str | None = None
    seq_num: int | None = None
    #: Events this problem cost whole (0 when only a field of them was lost, or none).
    events: int = 0

    def __str__(self) -> str:
        where = []
        if self.stream is not None:
            where.append(f"stream {self.stream!r}")
        if self.seq_num is not None:
            where.append(f"event {self.seq_num}")
        if self.run_uid is not None:
            where.append(f"run {short_uid(self.run_uid)}")
        place = f" ({', '.join(where)})" if where else ""
        return f"rejected {self.document} document{place}: {self.reason}"


@dataclass
class RawBatch:
    """Consecutive events of one stream, every field stacked on axis 0."""

    stream: str
    seq_num: np.ndarray
    time: np.ndarray
    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.seq_num)


class BatchSink(Protocol):
    """Where the assembler sends what it makes (the worker implements this)."""

    def open_run(self, start: Mapping[str, Any]) -> None: ...

    def open_stream(self, run_uid: str, descriptor: Mapping[str, Any]) -> None: ...

    def add_batch(self, run_uid: str, batch: RawBatch) -> None: ...

    def close_run(self, stop: Mapping[str, Any]) -> None: ...

    def reject(self, problem: DocumentProblem) -> None: ...


class BatchAssembler:
    """Route documents to per-run assemblers; report every bad document."""

    def __init__(
        self,
        sink: BatchSink,
        max_batch: int = 256,
        on_normalized: Callable[[str, Mapping[str, Any]], None] | None = None,
        max_open_runs: int = MAX_OPEN_RUNS,
        policy: ReadPolicy | None = None,
        stop_wait: float = STOP_WAIT,
    ) -> None:
        """``on_normalized``, if given, also gets every normalized document (e.g. a TiledWriter).

        Detector files are read, and passed on to ``on_normalized``, only as
        ``policy`` allows (default: the open in-process policy, see
        :class:`~.external.ReadPolicy`); the stream resources it refuses are
        not passed on. At a run's stop document, frames a datum announced but
        the file does not hold yet are waited for, for at most ``stop_wait`` s.

        When a start document would open more than ``max_open_runs`` runs, the
        oldest open run is reported and closed as aborted, so memory stays
        bounded however many stop documents are lost.
        """
        self._sink = sink
        self.policy = policy or ReadPolicy()
        self._stop_wait = stop_wait
        self._on_normalized = on_normalized
        self._max_batch = max_batch
        self._max_open_runs = max_open_runs
        self._runs: dict[str, _RunAssembler] = {}
        self._normalizers: dict[str, RunNormalizer] = {}
        self._owner: dict[str, str] = {}  # descriptor/resource uid -> run uid

    def __call__(self, name: Any, doc: Any) -> None:
        """Take one document; a bad one is reported to the sink, never raised."""
        try:
            self._route(name, doc)
        except _Rejected as rejected:
            self._sink.reject(rejected.problem)
        except Exception as exc:  # anything else a malformed document can provoke
            problem = self._problem(name, doc, _reason(exc))
            if name == "event":
                problem = replace(problem, events=1)
            self._sink.reject(problem)

    def flush(self) -> None:
        """Hand every complete pending event to the sink as batches; never raises."""
        for run_uid, run in list(self._runs.items()):
            try:
                run.flush()
            except Exception as exc:  # the run's own flush reports its rows; this is a backstop
                self._sink.reject(DocumentProblem("event", _reason(exc), run_uid))

    @property
    def open_runs(self) -> list[str]:
        return list(self._runs)

    def _route(self, name: Any, doc: Any) -> None:
        if not isinstance(name, str) or name not in DOCUMENT_NAMES:
            label = name[:40] if isinstance(name, str) else _short(name, 40)
            raise _Rejected(DocumentProblem(label, "unknown document name"))
        if name in DEPRECATED_NAMES:
            raise _Rejected(DocumentProblem(name, "deprecated document type, not supported"))
        if not isinstance(doc, Mapping):
            raise _Rejected(DocumentProblem(name, f"expected a dict, got {type(doc).__name__}"))
        odd = [key for key in doc if not isinstance(key, str)]
        if odd:
            raise _Rejected(DocumentProblem(name, f"keys must be strings, got {_short(odd)}"))
        routing = ROUTING_KEYS.get(name, ())
        missing = [key for key in routing if key not in doc]
        if missing:
            raise _Rejected(DocumentProblem(name, f"missing required key(s) {missing}"))
        for key in routing:
            if not isinstance(doc[key], str):
                kind = type(doc[key]).__name__
                raise _Rejected(DocumentProblem(name, f"{key!r} must be a string, got {kind}"))
        if name == "event":
            _check_event(doc)
        else:
            schema_validators[DocumentNames[name]].validate(doc)
        if name == "event_page":
            _check_page(doc)
        if name == "start":
            self._open(doc)
            return
        run_uid = self._run_of(name, doc)
        if name in PARENT_NAMES and doc["uid"] in self._owner:
            raise _Rejected(
                DocumentProblem(
                    name,
                    f"a {name} with uid {_short(doc['uid'])} was already received "
                    f"(run {short_uid(self._owner[doc['uid']])})",
                    run_uid,
                )
            )
        if name == "stop":
            self._stop(run_uid, doc)
            return
        self._normalizers[run_uid](name, doc)
        if name in PARENT_NAMES:  # only once the run has taken it
            self._owner[doc["uid"]] = run_uid

    def _open(self, start: Mapping[str, Any]) -> None:
        uid = start["uid"]
        if uid in self._runs:
            raise _Rejected(DocumentProblem("start", "a run with this uid is already open", uid))
        while len(self._runs) >= self._max_open_runs:
            self._evict(next(iter(self._runs)), uid)
        run = _RunAssembler(uid, self._sink, self._max_batch, self.policy, self._stop_wait)
        normalizer = _Normalizer()
        if self._on_normalized is not None:  # first, so it gets documents the run refuses too
            normalizer.subscribe(_RawRunFilter(uid, self.policy, self._on_normalized))
        normalizer.subscribe(run)
        self._runs[uid] = run
        self._normalizers[uid] = normalizer
        try:
            normalizer("start", start)
        except Exception:
            self._forget(uid)
            raise

    def _stop(self, run_uid: str, stop: Mapping[str, Any]) -> None:
        """Close the run, even when its stop document cannot be normalized."""
        run = self._runs[run_uid]
        try:
            self._normalizers[run_uid]("stop", stop)
        except Exception as exc:  # e.g. an event's datum never came
            reason = f"{_reason(exc)}; the run is closed without it"
            self._sink.reject(DocumentProblem("stop", _clip(reason), run_uid))
        finally:
            try:
                if not run.stopped:
                    run.stop(stop)
            finally:
                self._forget(run_uid)

    def _evict(self, run_uid: str, newcomer: str) -> None:
        """Close the oldest open run to make room; its stop document never came."""
        reason = (
            f"more than {self._max_open_runs} runs open at once: run {short_uid(run_uid)} is "
            f"closed as aborted to make room for run {short_uid(newcomer)} (its stop document "
            "never came)"
        )
        self._sink.reject(DocumentProblem("stop", reason, run_uid))
        stop = {
            "uid": f"{run_uid}-evicted",
            "run_start": run_uid,
            "time": time.time(),
            "exit_status": "abort",
            "reason": reason,
        }
        try:
            self._runs[run_uid].stop(stop)
        finally:
            self._forget(run_uid)

    def _forget(self, run_uid: str) -> None:
        self._runs.pop(run_uid, None)
        self._normalizers.pop(run_uid, None)
        for key in [k for k, v in self._owner.items() if v == run_uid]:
            del self._owner[key]

    def _run_of(self, name: str, doc: Mapping[str, Any]) -> str:
        if name in ("stop", "descriptor", "resource", "stream_resource"):
            run_uid = doc.get("run_start")
            if run_uid not in self._runs:
                raise _Rejected(DocumentProblem(name, f"no open run with uid {_short(run_uid)}"))
            return run_uid
        parent_key = "resource" if name in ("datum", "datum_page") else "descriptor"
        parent = doc[parent_key]
        run_uid = self._owner.get(parent)
        if run_uid is None:
            raise _Rejected(
                DocumentProblem(name, f"refers to unknown {parent_key} {_short(parent)}")
            )
        return run_uid

    def _problem(self, name: Any, doc: Any, reason: str) -> DocumentProblem:
        """A problem with ``doc``, placed in its run and stream where those are known.

        Only string uids are looked up, so an unhashable or odd value in the
        document cannot make reporting the problem fail too.
        """
        run_uid = stream = seq_num = None
        if isinstance(doc, Mapping):
            owner = _text(doc.get("descriptor")) or _text(doc.get("resource"))
            run_uid = _text(doc.get("run_start")) or self._owner.get(owner)
            seq = doc.get("seq_num")
            if isinstance(seq, int) and not isinstance(seq, bool):
                seq_num = seq
            run = self._runs.get(run_uid) if run_uid is not None else None
            if run is not None and owner in run.streams:
                stream = run.streams[owner]
        label = name[:40] if isinstance(name, str) else _short(name, 40)
        return DocumentProblem(label, _clip(reason), run_uid, stream, seq_num)


class _RawRunFilter:
    """The normalized documents of one run as the raw-run writer may have them.

    ``RunNormalizer`` drops ``run_start`` from the stream resources it makes
    (TiledWriter's run router needs it: without it every file-backed field of
    the run is lost), and Tiled's own readable-area check does not resolve
    symlinks or ``..``. So each stream resource gets its run back and its URI
    resolved, and one the policy refuses (place, or declared size over the
    budget) is not passed on, nor its datums (the assembler reports why).
    """

    def __init__(
        self,
        run_uid: str,
        policy: ReadPolicy,
        forward: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        self._run_uid = run_uid
        self._policy = policy
        self._forward = forward
        self._refused: set[str] = set()
        self._data_keys: dict[str, Mapping[str, Any]] = {}

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "descriptor":
            self._data_keys.update(doc.get("data_keys", {}))
        elif name == "stream_resource":
            try:
                path = self._checked(doc)
            except (ExternalDataRefused, KeyError, TypeError, ValueError):
                self._refused.add(doc.get("uid"))
                return
            doc = {**doc, "run_start": self._run_uid, "uri": path.as_uri()}
        elif name == "stream_datum" and doc.get("stream_resource") in self._refused:
            return
        self._forward(name, doc)

    def _checked(self, doc: Mapping[str, Any]) -> Path:
        field = doc["data_key"]
        path = self._policy.check_path(doc["uri"], field)
        key = self._data_keys.get(field, {})
        shape = [int(s) for s in key.get("shape") or () if s is not None]
        self._policy.check_budget(field, shape, declared_dtype(key))
        return path


class _Normalizer(RunNormalizer):
    """``RunNormalizer`` that does not validate events a second time.

    jsonschema validation was most of the worker's time per event; events are
    checked once, cheaply, by :func:`_check_event` before they get here, and
    every other document is still validated here.
    """

    def emit(self, name, doc):
        if name == DocumentNames.event:
            self.dispatcher.process(name, doc)
        else:
            super().emit(name, doc)


#: The event schema's required keys and their types, checked without jsonschema.
EVENT_KEYS: Mapping[str, tuple[type, str]] = {
    "uid": (str, "a string"),
    "descriptor": (str, "a string"),
    "seq_num": (Integral, "an integer"),
    "time": (Real, "a number"),
    "data": (Mapping, "an object"),
    "timestamps": (Mapping, "an object"),
}


class _InvalidEvent(ValueError):
    """An event that lacks a required key or has one of the wrong type."""


def _check_event(doc: Mapping[str, Any]) -> None:
    """Raise _InvalidEvent unless ``doc`` has the event schema's required keys and types."""
    for key, (kind, described) in EVENT_KEYS.items():
        if key not in doc:
            raise _InvalidEvent(f"'{key}' is a required property")
        value = doc[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _InvalidEvent(f"'{key}' must be {described}, got {type(value).__name__}")
    filled = doc.get("filled", {})
    if not isinstance(filled, Mapping):
        raise _InvalidEvent(f"'filled' must be an object, got {type(filled).__name__}")


def _check_page(doc: Mapping[str, Any]) -> None:
    """Raise _InvalidEvent unless every column of the (valid) event page has one entry per event."""
    lengths = {"seq_num": len(doc["seq_num"]), "uid": len(doc["uid"]), "time": len(doc["time"])}
    for part in ("data", "timestamps"):
        lengths.update({f"{part}[{k!r}]": len(v) for k, v in doc[part].items()})
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise _InvalidEvent(f"the page's columns differ in length: {detail}")


class _Rejected(Exception):
    def __init__(self, problem: DocumentProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class _Row:
    seq_num: int
    time: float
    data: dict[str, Any]


@dataclass
class _Stream:
    name: str
    descriptor: Mapping[str, Any]
    internal: dict[str, tuple[int | None, ...] | None]
    external: dict[str, tuple[int | None, ...] | None]
    pending: list[_Row] = field(default_factory=list)


class _RunAssembler(DocumentRouter):
    """One run's normalized documents, assembled into batches per stream."""

    def __init__(
        self,
        run_uid: str,
        sink: BatchSink,
        max_batch: int,
        policy: ReadPolicy | None = None,
        stop_wait: float = 0.0,
    ) -> None:
        super().__init__()
        self.run_uid = run_uid
        self.streams: dict[str, str] = {}  # descriptor uid -> stream name
        self._sink = sink
        self._max_batch = max_batch
        self._stop_wait = stop_wait
        self._descriptors: dict[str, _Stream] = {}
        self._external = ExternalFields(policy or ReadPolicy())
        self.stopped = False

    def start(self, doc):
        self._sink.open_run(doc)

    def descriptor(self, doc):
        data_keys = doc["data_keys"]
        internal, external = {}, {}
        for key, spec in data_keys.items():
            shape = _expected_shape(spec)
            (external if "external" in spec else internal)[key] = shape
        stream = _Stream(doc.get("name", "primary"), doc, internal, external)
        self._descriptors[doc["uid"]] = stream
        self.streams[doc["uid"]] = stream.name
        self._sink.open_stream(self.run_uid, doc)

    def event_page(self, doc):
        stream = self._descriptors[doc["descriptor"]]
        for i, seq_num in enumerate(doc["seq_num"]):
            data = {key: values[i] for key, values in doc["data"].items()}
            problem = self._check_row(stream, data, seq_num, doc["time"][i])
            if problem:
                self._sink.reject(problem)
                continue
            stream.pending.append(_Row(int(seq_num), float(doc["time"][i]), data))
        if len(stream.pending) >= self._max_batch:
            self._flush_stream(doc["descriptor"], stream)

    def stream_resource(self, doc):
        self._external.add_resource(doc)

    def stream_datum(self, doc):
        sres_uid = doc["stream_resource"]
        if not self._external.knows_resource(sres_uid):
            raise _Rejected(
                DocumentProblem(
                    "stream_datum",
                    f"refers to unknown stream_resource {_short(sres_uid)}",
                    self.run_uid,
                )
            )
        stream = self._descriptors[doc["descriptor"]]
        refused = self._external.add_datum(doc, stream.descriptor)
        if refused is not None:
            self._sink.reject(
                DocumentProblem("stream_resource", _clip(refused), self.run_uid, stream.name)
            )

    def stop(self, doc):
        """Hand on what is complete, waiting (bounded) for frames still being written."""
        self.stopped = True
        deadline = time.monotonic() + self._stop_wait
        while self.flush() and time.monotonic() < deadline:
            time.sleep(0.02)
        for desc_uid, stream in self._descriptors.items():
            self._flush_stream(desc_uid, stream, final=True)
        self._sink.close_run(doc)

    def flush(self) -> bool:
        """Hand on what is complete; True if some event waits for frames not yet on disk."""
        waiting = False
        for desc_uid, stream in self._descriptors.items():
            waiting = self._flush_stream(desc_uid, stream) or waiting
        return waiting

    def _check_row(
        self, stream: _Stream, data: dict[str, Any], seq_num: int, time: Any
    ) -> DocumentProblem | None:
        def problem(reason: str) -> DocumentProblem:
            return DocumentProblem(
                "event", _clip(reason), self.run_uid, stream.name, seq_num, events=1
            )

        if not INT64[0] <= seq_num <= INT64[1]:
            return problem(f"seq_num {_short(seq_num)} does not fit in 64 bits")
        try:
            float(time)
        except (OverflowError, TypeError, ValueError):
            return problem(f"time {_short(time)} is too large for a float")
        missing = [k for k in stream.internal if k not in data]
        if missing:
            return problem(f"field(s) {missing} of the descriptor are missing")
        for key, shape in stream.internal.items():
            try:
                value = np.asarray(data[key])
            except (ValueError, TypeError, OverflowError) as exc:
                return problem(f"field {key!r} is not a regular array: {_reason(exc)}")
            if shape is not None and not _shape_matches(value.shape, shape):
                return problem(
                    f"field {key!r} has shape {value.shape}, the descriptor says {shape}"
                )
            data[key] = value
        return None

    def _flush_stream(self, desc_uid: str, stream: _Stream, final: bool = False) -> bool:
        """Hand on the leading pending events whose file-backed fields are settled.

        An event waits for a datum of each of its file-backed fields, then for
        its frames to be on disk; with ``final`` nothing waits any longer, and
        what never came costs that field only. Returns True if an event waits
        for frames a datum announced that are not on disk yet.
        """
        if not stream.pending:
            return False
        ready = len(stream.pending)
        if not final:
            ready = next(
                (
                    i
                    for i, row in enumerate(stream.pending)
                    if not all(
                        self._external.has_frames(desc_uid, k, row.seq_num) for k in stream.external
                    )
                ),
                ready,
            )
        rows = stream.pending[:ready]
        waiting = False
        for key in stream.external:
            if not rows:
                break

            def lost(rows_lost: list[_Row], field: str, reason: str, name: str = stream.name):
                self._field_lost(name, rows_lost, field, reason)

            try:
                rows = rows[: self._external.fill(desc_uid, key, rows, final, lost)]
                waiting = waiting or self._external.waiting_for_frames
            except Exception as exc:  # a backstop: a bug here costs this field, not the run
                lost(rows, key, f"could not be read ({type(exc).__name__})")
        if not rows:
            return waiting
        stream.pending = stream.pending[len(rows) :]
        for group in _by_fields(rows):
            for start in range(0, len(group), self._max_batch):
                chunk = group[start : start + self._max_batch]
                try:
                    batch = _stack(stream.name, chunk)
                except Exception as exc:
                    self._lost(stream, chunk, f"could not be stacked: {_reason(exc)}")
                    continue
                self._sink.add_batch(self.run_uid, batch)
        return waiting

    def _lost(self, stream: _Stream, rows: list[_Row], reason: str) -> None:
        """Report rows that were taken but cannot be handed on (one problem for them all)."""
        first = rows[0].seq_num
        self._sink.reject(
            DocumentProblem(
                "event",
                _clip(f"{_span(rows)} {reason}"),
                self.run_uid,
                stream.name,
                first,
                events=len(rows),
            )
        )

    def _field_lost(self, stream: str, rows: list[_Row], key: str, reason: str) -> None:
        """Report a file-backed field that ``rows`` go on without (their other fields stay)."""
        if not rows:
            return
        message = f"{_span(rows)}: field {key!r} not read, the events go on without it: {reason}"
        self._sink.reject(
            DocumentProblem("event", _clip(message), self.run_uid, stream, rows[0].seq_num)
        )


def _expected_shape(spec: Mapping[str, Any]) -> tuple[int | None, ...] | None:
    shape = spec.get("shape")
    if shape is None:
        return None
    return tuple(None if s is None or s < 0 else int(s) for s in shape)


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    if expected in ((), (1,)) and actual in ((), (1,)):
        return True
    if len(actual) != len(expected):
        return False
    return all(e is None or a == e for a, e in zip(actual, expected, strict=True))


def _span(rows: list[_Row]) -> str:
    """``events 3..7`` (or ``event 3``): the rows a problem is about, for its message."""
    first, last = rows[0].seq_num, rows[-1].seq_num
    return f"events {first}..{last}" if len(rows) > 1 else f"event {first}"


def _by_fields(rows: list[_Row]) -> list[list[_Row]]:
    """Consecutive rows with the same fields (a lost file-backed field splits them)."""
    groups: list[list[_Row]] = []
    for row in rows:
        if groups and groups[-1][0].data.keys() == row.data.keys():
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _stack(stream: str, rows: list[_Row]) -> RawBatch:
    keys = rows[0].data.keys()
    data = {}
    for key in keys:
        values = [row.data[key] for row in rows]
        try:
            data[key] = np.stack(values)
        except ValueError:  # ragged (descriptor shape left open): keep one object per event
            stacked = np.empty(len(values), dtype=object)
            stacked[:] = values
            data[key] = stacked
    return RawBatch(
        stream=stream,
        seq_num=np.fromiter((r.seq_num for r in rows), dtype=np.int64, count=len(rows)),
        time=np.fromiter((r.time for r in rows), dtype=np.float64, count=len(rows)),
        data=data,
    )


def _schema_message(exc: jsonschema.ValidationError) -> str:
    path = "/".join(str(p) for p in exc.absolute_path)
    return f"{exc.message} (at {path})" if path else exc.message


def _reason(exc: BaseException) -> str:
    """Why a document was refused, from the exception it provoked, in a bounded length."""
    if isinstance(exc, jsonschema.ValidationError):
        return _clip(f"invalid document: {_schema_message(exc)}")
    if isinstance(exc, _InvalidEvent):
        return _clip(f"invalid document: {exc}")
    if isinstance(exc, KeyError):
        return _clip(f"required key {_short(exc.args[0] if exc.args else None)} is missing")
    return _clip(f"{type(exc).__name__}: {exc}")


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, abbreviated: documents may hold anything, of any size."""
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that fails is the document's fault, not ours
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
