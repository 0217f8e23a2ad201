"""Results to Tiled: the one place that writes.

Layout, under a top-level ``smartlab`` container::

    smartlab/
      <analysis uid>/            spec SmartLabAnalysis; metadata: run_uid, scan_id,
                                 plugin, plugin_version, model, sha256, device, status, ...
        <stream>/                spec SmartLabStream
          events/000000, ...     tables: seq_num, time, the plugin's scalars
          <array>/000000, ...    arrays: one leading entry per event
        errors/000000, ...       tables: stage, stream, seq_num, error, message, traceback

Every part is written once and never grows: tiled 0.2 fails readers of a node
that is appended to under them, whereas a new immutable node is always read
consistently. Readers concatenate the parts in key order
(:mod:`smartlab_plugins.results` does it for them). Writes happen on the
publisher's own thread; results that queue up while a write is in flight, or
within ``min_interval`` of the last write, are merged into the next part, so
HTTP round trips do not grow with the event rate: with tiled 0.2 a part costs
the server tens of milliseconds to write and again to read, and a server kept
busy by many small parts answers every client late.

The raw run goes to Tiled through bluesky-tiled-plugins' ``TiledWriter``
(:class:`RawRunWriter`), on its own thread too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from smartlab_plugins.hookspecs import Results

logger = logging.getLogger(__name__)

ROOT_KEY = "smartlab"
ANALYSIS_SPEC = "SmartLabAnalysis"
STREAM_SPEC = "SmartLabStream"
EVENTS_KEY = "events"
ERRORS_KEY = "errors"
PART_DIGITS = 6


@dataclass(frozen=True)
class ErrorRecord:
    """One failure, as published in an analysis' ``errors`` table."""

    plugin: str
    stage: str
    stream: str
    seq_num: int
    error: str
    message: str
    traceback: str = ""


def part_key(index: int) -> str:
    return f"{index:0{PART_DIGITS}d}"


def json_clean(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class Publisher:
    """Write analyses to Tiled from a background thread, in order, batched.

    ``min_interval`` (s) is the shortest time between two rounds of writes:
    what arrives sooner waits and is merged, so at most about ``1 /
    min_interval`` parts per second are written per stream and array,
    whatever the event rate. Flushing and closing never wait for it.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        max_pending: int = 100_000,
        min_interval: float = 0.1,
    ) -> None:
        self._client_factory = client_factory
        self._min_interval = min_interval
        self._last_round = 0.0
        self._ops: queue.Queue = queue.Queue(maxsize=max_pending)
        self._nodes: dict[str, Any] = {}
        self._streams: dict[tuple[str, str], Any] = {}
        self._parts: dict[tuple[str, str, str], tuple[Any, int]] = {}
        self._root = None
        self._written = 0
        self._failed = 0
        self._thread = threading.Thread(target=self._run, name="smartlab-publisher", daemon=True)
        self._thread.start()

    # -- API used by the worker (all non-blocking) -------------------------

    def open_analysis(self, metadata: Mapping[str, Any]) -> str:
        """Queue the creation of an analysis node; return its key at once."""
        key = str(uuid.uuid4())
        self._put(("open", key, json_clean({**metadata, "analysis_uid": key})))
        return key

    def append(
        self, key: str, stream: str, seq_num: np.ndarray, time: np.ndarray, results: Results
    ) -> None:
        self._put(("append", key, stream, seq_num, time, results))

    def record_errors(self, key: str, records: list[ErrorRecord]) -> None:
        self._put(("errors", key, records))

    def close_analysis(self, key: str, metadata: Mapping[str, Any]) -> None:
        self._put(("close", key, json_clean(metadata)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        done = threading.Event()
        self._put(("barrier", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> bool:
        flushed = self.flush(timeout)
        self._put(("exit",))
        self._thread.join(timeout=5)
        return flushed

    def stats(self) -> dict[str, int]:
        return {"queued": self._ops.qsize(), "written": self._written, "failed": self._failed}

    def _put(self, op: tuple) -> None:
        try:
            self._ops.put_nowait(op)
        except queue.Full:
            self._failed += 1
            logger.error(
                "publisher queue full (%d items): dropped a %s operation", self._ops.maxsize, op[0]
            )

    # -- the publisher thread ----------------------------------------------

    def _run(self) -> None:
        while True:
            ops = [self._ops.get()]
            self._gather(ops, until=self._last_round + self._min_interval)
            self._last_round = time.monotonic()
            if self._execute(ops):
                return

    def _gather(self, ops: list[tuple], until: float) -> None:
        """Add to ``ops`` what is queued, and what arrives before ``until`` (monotonic s).

        Stops waiting at once when a flush, close or exit is among them.
        """
        while True:
            urgent = any(op[0] in ("barrier", "exit") for op in ops)
            wait = 0.0 if urgent else until - time.monotonic()
            try:
                ops.append(self._ops.get(timeout=wait) if wait > 0 else self._ops.get_nowait())
            except queue.Empty:
                return

    def _execute(self, ops: list[tuple]) -> bool:
        """Carry out ``ops`` in order, merging appends and errors per analysis."""
        appends: dict[tuple[str, str], list[tuple]] = {}
        errors: dict[str, list[ErrorRecord]] = {}
        for op in ops:
            kind = op[0]
            if kind == "append":
                appends.setdefault((op[1], op[2]), []).append(op)
            elif kind == "errors":
                errors.setdefault(op[1], []).extend(op[2])
            elif kind in ("open", "close"):
                self._flush_pending(appends, errors, only=op[1])
                self._guarded(kind, op[1], getattr(self, f"_do_{kind}"), *op[1:])
            else:
                self._flush_pending(appends, errors)
                if kind == "barrier":
                    op[1].set()
                elif kind == "exit":
                    return True
        self._flush_pending(appends, errors)
        return False

    def _flush_pending(
        self,
        appends: dict[tuple[str, str], list[tuple]],
        errors: dict[str, list[ErrorRecord]],
        only: str | None = None,
    ) -> None:
        for key, stream in [k for k in appends if only is None or k[0] == only]:
            ops = appends.pop((key, stream))
            for group in _same_shape_groups(ops):
                self._guarded("results", key, self._do_append, key, stream, group)
        for key in [k for k in errors if only is None or k == only]:
            records = errors.pop(key)
            self._guarded("errors", key, self._do_errors, key, records)

    def _guarded(self, kind: str, key: str, action: Callable[..., None], *args: Any) -> None:
        """Do one write; a failure is logged with what was lost, and the thread goes on."""
        try:
            action(*args)
            self._written += 1
        except Exception as exc:
            self._failed += 1
            logger.error(
                "could not write %s of analysis %s to Tiled: %s: %s",
                kind,
                key,
                type(exc).__name__,
                exc,
            )

    def _client_root(self):
        if self._root is None:
            client = self._client_factory()
            if ROOT_KEY not in client:
                try:
                    client.create_container(
                        ROOT_KEY, metadata={"description": "SmartLab analysis results"}
                    )
                except Exception:
                    if ROOT_KEY not in client:  # lost a creation race: fine if it exists now
                        raise
            self._root = client[ROOT_KEY]
        return self._root

    def _do_open(self, key: str, metadata: dict[str, Any]) -> None:
        self._nodes[key] = self._client_root().create_container(
            key, metadata=metadata, specs=[ANALYSIS_SPEC]
        )

    def _node(self, key: str):
        if key not in self._nodes:
            raise RuntimeError("its analysis node was never created (see the earlier error)")
        return self._nodes[key]

    def _stream_node(self, key: str, stream: str):
        node = self._streams.get((key, stream))
        if node is None:
            node = self._node(key).create_container(
                stream, metadata={"stream": stream}, specs=[STREAM_SPEC]
            )
            self._streams[(key, stream)] = node
        return node

    def _next_part(self, key: str, stream: str, name: str, parent) -> tuple[Any, str]:
        """The container for parts of ``name`` under ``parent``, and the next part's key."""
        slot = (key, stream, name)
        if slot not in self._parts:
            self._parts[slot] = (parent.create_container(name), 0)
        container, index = self._parts[slot]
        self._parts[slot] = (container, index + 1)
        return container, part_key(index)

    def _do_append(self, key: str, stream: str, ops: list[tuple]) -> None:
        node = self._stream_node(key, stream)
        seq_num = np.concatenate([op[3] for op in ops])
        results: list[Results] = [op[5] for op in ops]
        first = results[0]
        if first.scalars or not first.arrays:
            columns: dict[str, Any] = {
                "seq_num": seq_num,
                "time": np.concatenate([op[4] for op in ops]),
            }
            for name in first.scalars:
                columns[name] = np.concatenate([np.asarray(r.scalars[name]) for r in results])
            container, part = self._next_part(key, stream, EVENTS_KEY, node)
            container.write_table(pd.DataFrame(columns), key=part)
        for name, value in first.arrays.items():
            stacked = np.concatenate([np.asarray(r.arrays[name]) for r in results])
            extra = first.dims.get(name) or tuple(f"dim_{i}" for i in range(1, np.ndim(value)))
            container, part = self._next_part(key, stream, name, node)
            container.write_array(
                stacked, key=part, dims=["event", *extra], metadata={"seq_num": seq_num.tolist()}
            )

    def _do_errors(self, key: str, records: list[ErrorRecord]) -> None:
        container, part = self._next_part(key, "", ERRORS_KEY, self._node(key))
        container.write_table(pd.DataFrame([asdict(r) for r in records]), key=part)

    def _do_close(self, key: str, metadata: dict[str, Any]) -> None:
        self._node(key).update_metadata(metadata=metadata)


def _same_shape_groups(ops: list[tuple]) -> list[list[tuple]]:
    """Consecutive appends whose results have the same names, which can share a part."""
    groups: list[list[tuple]] = []
    signature = None
    for op in ops:
        results: Results = op[5]
        this = (tuple(results.scalars), tuple(results.arrays))
        if groups and this == signature:
            groups[-1].append(op)
        else:
            groups.append([op])
            signature = this
    return groups


class RawRunWriter:
    """The raw documents of each run to Tiled, via ``TiledWriter``, on a thread of its own.

    ``TiledWriter`` inline on the RunEngine thread costs about 40% of a fast
    scan; here it runs beside the analysis, off the RunEngine's process by
    default. It receives documents already normalized by the batch
    assembler's ``RunNormalizer`` (so they are normalized and validated once,
    not twice). Failures are logged, rate-limited, and never stop the analysis.
    """

    def __init__(self, client_factory: Callable[[], Any], max_pending: int = 1_000_000) -> None:
        self._client_factory = client_factory
        self._docs: queue.Queue = queue.Queue(maxsize=max_pending)
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="smartlab-raw-writer", daemon=True)
        self._thread.start()

    def put(self, name: str, doc: Any) -> None:
        try:
            self._docs.put_nowait((name, doc))
        except queue.Full:
            self.failures += 1
            logger.error("raw run writer queue full: a %s document was not written to Tiled", name)

    def flush(self, timeout: float | None = None) -> bool:
        done = threading.Event()
        self._docs.put(("__barrier__", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> bool:
        flushed = self.flush(timeout)
        self._docs.put(("__exit__", None))
        self._thread.join(timeout=5)
        return flushed

    def _run(self) -> None:
        from bluesky_tiled_plugins import TiledWriter

        writer = None
        while True:
            name, doc = self._docs.get()
            if name == "__barrier__":
                doc.set()
                continue
            if name == "__exit__":
                return
            try:
                if writer is None:
                    writer = TiledWriter(self._client_factory(), normalizer=None)
                writer(name, doc)
            except Exception as exc:
                self._failed(name, exc)

    def _failed(self, name: str, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            logger.error(
                "could not write a raw %s document to Tiled (%d failures so far): %s: %s",
                name,
                self.failures,
                type(exc).__name__,
                exc,
            )
