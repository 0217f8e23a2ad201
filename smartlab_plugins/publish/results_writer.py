"""Analyses' results to Tiled, from a background thread, in order, batched, losslessly.

Where they go is described in :mod:`smartlab_plugins.layout`. Each
round of writes is decided in full (every key, and for each table append the
number of rows the table has before it) before any is sent, and kept in the
journal on local disk until Tiled has all of it, so a round can be sent again
after a crash or an outage without repeating rows. Results that queue up while
a write is in flight, or within ``min_interval`` of the last write, are merged
into the next append, so HTTP round trips do not grow with the event rate.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from smartlab_plugins.connection import preload_node_clients
from smartlab_plugins.hookspecs import Results
from smartlab_plugins.layout import (
    ANALYSIS_SPEC,
    ERRORS_KEY,
    EVENTS_KEY,
    ROOT_KEY,
    RUN_LINKS_KEY,
    STREAM_SPEC,
    ErrorRecord,
    json_clean,
    part_key,
)
from smartlab_plugins.publish import journal
from smartlab_plugins.publish.tables import conform, rows
from smartlab_plugins.retry import Backoff, is_conflict

logger = logging.getLogger(__name__)

#: Put on the operations queue by the writer when it has written every queued round: the
#: planner, holding what arrived meanwhile (:meth:`Publisher._hold_while_writing`), sends it on.
_WRITTEN = ("written",)


@dataclass
class Write:
    """One request to Tiled with every key decided beforehand, so repeating it is harmless.

    ``kind`` is ``container``, ``rows``, ``array`` or ``metadata``; ``parent``
    the path below the ``smartlab`` container; ``key`` the node to create, to
    append to (``rows``: an appendable table, made by its first append) or to
    update (``metadata``). A node that already exists is taken as it is
    (containers) or filled again (array parts: one half-written before a crash
    must not stay so). An append names ``rows_before``, the rows its table has
    before it; when it is sent again (``verify``: after a failure whose outcome
    is unknown, or from another process' journal), the rows already there are
    counted and only the missing ones appended.
    """

    kind: str
    parent: tuple[str, ...]
    key: str
    data: Any = None
    metadata: dict[str, Any] | None = None
    specs: list[str] | None = None
    dims: list[str] | None = None
    rows_before: int | None = None
    verify: bool = False

    def __post_init__(self) -> None:
        self.parent = tuple(self.parent)  # a list when read back from the journal

    @property
    def path(self) -> tuple[str, ...]:
        return (*self.parent, self.key)

    def record(self) -> dict[str, Any]:
        """The fields as the journal stores them (``data`` is not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Round:
    """Writes decided together; in the journal on disk until Tiled has all of them."""

    writes: list[Write] | None
    path: Path | None = None
    adopted: bool = False  # left by another publisher: what it sent may be in Tiled already
    done: int = 0
    barriers: list[threading.Event] = field(default_factory=list)

    def load(self) -> list[Write]:
        if self.writes is None:
            records = journal.load(self.path) if self.path is not None else []
            self.writes = [Write(**r) for r in records]
            for write in self.writes:
                write.verify = write.verify or self.adopted
        return self.writes


class Publisher:
    """Write analyses to Tiled from a background thread, in order, batched, losslessly.

    ``min_interval`` (s) is the shortest time between two rounds of writes:
    what arrives sooner waits and is merged, so at most about ``1 /
    min_interval`` parts per second are written per stream and array,
    whatever the event rate; and while earlier rounds are still being
    written, what arrives is merged too (for up to ``max_hold`` seconds), so
    a slow Tiled gets fewer, larger parts rather than a growing backlog.
    Flushing and closing never wait for either.

    With a ``journal_dir``, every round is stored on local disk before it is
    sent and removed once Tiled has it (:mod:`smartlab_plugins.publish.journal`). When
    Tiled cannot be reached, or answers 5xx, the publisher retries the round
    with exponential backoff (``retry_initial`` up to ``retry_max`` seconds)
    and keeps queuing new rounds on disk meanwhile, so memory stays bounded
    and nothing is lost; rounds left by a publisher that died or closed
    during an outage are adopted at start and written first. A request Tiled
    refuses for good (4xx) is logged with what was lost and skipped.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        max_pending: int = 100_000,
        min_interval: float = 0.02,
        journal_dir: Path | None = None,
        tiled_uri: str = "",
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        server_error_attempts: int = 5,
        max_hold: float = 1.0,
        max_hold_ops: int = 10_000,
    ) -> None:
        self._client_factory = client_factory
        self._min_interval = min_interval
        self._max_hold = max_hold
        self._max_hold_ops = max_hold_ops
        self._backoff = Backoff(retry_initial, retry_max, server_error_attempts)
        self._last_round = 0.0
        self._ops: queue.Queue = queue.Queue(maxsize=max_pending)
        self._journal = journal.Journal(journal_dir, tiled_uri) if journal_dir else None
        self._backlog: deque[_Round] = deque()
        if self._journal is not None:
            self._backlog.extend(
                _Round(None, path, adopted=True) for path in self._journal.adopt_orphans()
            )
        self._retry_at = 0.0
        self._outage_since: float | None = None
        self._handles: dict[tuple[str, ...], Any] = {}
        self._planned: set[tuple[str, ...]] = set()
        self._next_index: dict[tuple[str, ...], int] = {}
        self._rows: dict[tuple[str, ...], int] = {}  # per table: rows planned so far
        self._schemas: dict[tuple[str, ...], pa.Schema] = {}
        self._dropped_columns: set[tuple[str, ...]] = set()
        self.journal_failures = 0  # rounds the disk refused (kept in memory instead)
        self._run_of: dict[str, tuple[Any, Any]] = {}  # open analysis -> (run uid, plugin)
        self._client: Any = None
        self._journal_refusing = False
        self._root = None
        self._written = 0
        self._failed = 0
        self._lock = threading.Condition()
        self._taken = 0  # operations accepted, and those whose writes are queued (journaled)
        self._admitted = 0
        self._exiting = False
        self._released = False
        self._planner = threading.Thread(
            target=self._plan_loop, name="smartlab-planner", daemon=True
        )
        self._thread = threading.Thread(
            target=self._write_loop, name="smartlab-publisher", daemon=True
        )
        self._planner.start()
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
        """Write what is queued (up to ``timeout``), then stop; what Tiled did not
        take stays in the journal for the next publisher."""
        flushed = self.flush(timeout)
        self._put(("exit",))
        self._planner.join(timeout=10)
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # stuck in a request to an unreachable Tiled
            self._leave()
        return flushed

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self._ops.qsize(),
            "not_journaled": self._taken - self._admitted,
            "written": self._written,
            "failed": self._failed,
            "backlog_rounds": len(self._backlog),
            "journal_failures": self.journal_failures,
            "tiled_unreachable_for_s": (
                round(time.monotonic() - self._outage_since, 1) if self._outage_since else 0.0
            ),
        }

    def _put(self, op: tuple) -> None:
        try:
            self._ops.put_nowait(op)
            self._taken += 1
        except queue.Full:
            self._failed += 1
            logger.error(
                "publisher queue full (%d items): dropped a %s operation", self._ops.maxsize, op[0]
            )

    # -- the publisher thread ----------------------------------------------

    def _plan_loop(self) -> None:
        """Take operations, decide their writes, and queue them (in the journal) as rounds."""
        while True:
            ops = [self._ops.get()]
            if ops[0] is _WRITTEN:
                continue
            self._gather(ops, until=self._last_round + self._min_interval)
            ops = [op for op in ops if op is not _WRITTEN]  # a hold below waits for a new one
            self._hold_while_writing(ops)
            ops = [op for op in ops if op is not _WRITTEN]
            self._last_round = time.monotonic()
            exiting = self._admit(ops)
            self._admitted += len(ops)
            if exiting:
                with self._lock:
                    self._exiting = True
                    self._lock.notify_all()
                return

    def _write_loop(self) -> None:
        """Send the queued rounds to Tiled, in order, retrying while it is away."""
        preload_node_clients()  # before the first table, not inside its request
        while True:
            with self._lock:
                while not self._exiting and (
                    not self._backlog or time.monotonic() < self._retry_at
                ):
                    wait = self._retry_at - time.monotonic() if self._backlog else None
                    self._lock.wait(timeout=wait)
                exiting = self._exiting
            self._drain()
            if exiting:
                self._leave()
                return

    def _hold_while_writing(self, ops: list[tuple]) -> None:
        """While earlier rounds are still being written, keep merging what arrives.

        So the size of a round follows how fast Tiled takes them, and the
        number of parts does not grow with the event rate when Tiled is slow.
        Held for at most ``max_hold`` seconds (then journaled anyway: during an
        outage nothing waits long in memory) or ``max_hold_ops`` operations.
        """
        hold_until = time.monotonic() + self._max_hold
        while self._backlog and len(ops) < self._max_hold_ops:
            now = time.monotonic()
            if now >= hold_until or any(op[0] in ("barrier", "exit") for op in ops):
                return
            self._gather(ops, until=min(hold_until, now + 0.01), until_written=True)

    def _gather(self, ops: list[tuple], until: float, until_written: bool = False) -> None:
        """Add to ``ops`` what is queued, and what arrives before ``until`` (monotonic s).

        Stops waiting at once when a flush, close or exit is among them; with
        ``until_written``, also when the writer says it has written every round
        (:data:`_WRITTEN`).
        """
        while True:
            urgent = any(
                op[0] in ("barrier", "exit") or (until_written and op is _WRITTEN) for op in ops
            )
            wait = 0.0 if urgent else until - time.monotonic()
            try:
                ops.append(self._ops.get(timeout=wait) if wait > 0 else self._ops.get_nowait())
            except queue.Empty:
                return

    def _admit(self, ops: list[tuple]) -> bool:
        """Decide the writes of ``ops`` and queue them as rounds; True if told to exit."""
        writes: list[Write] = []
        appends: dict[tuple[str, str], list[tuple]] = {}
        errors: dict[str, list[ErrorRecord]] = {}
        exiting = False
        for op in ops:
            kind = op[0]
            if kind == "append":
                appends.setdefault((op[1], op[2]), []).append(op)
            elif kind == "errors":
                errors.setdefault(op[1], []).extend(op[2])
            elif kind in ("open", "close"):
                writes += self._plan_pending(appends, errors, only=op[1])
                writes += self._plan_open(*op[1:]) if kind == "open" else self._plan_close(*op[1:])
            else:
                writes += self._plan_pending(appends, errors)
                self._queue_round(writes)
                writes = []
                if kind == "barrier":
                    self._add_barrier(op[1])
                elif kind == "exit":
                    exiting = True
        self._queue_round(writes + self._plan_pending(appends, errors))
        return exiting

    def _add_barrier(self, barrier: threading.Event) -> None:
        """Have ``barrier`` set once everything queued before it is written."""
        with self._lock:
            if not self._backlog:
                self._backlog.append(_Round([]))
            self._backlog[-1].barriers.append(barrier)
            self._lock.notify_all()

    def _queue_round(self, writes: list[Write]) -> None:
        if not writes:
            return
        path = self._journal_round(writes)
        with self._lock:
            keep = writes if path is None or not self._backlog else None  # disk holds the rest
            self._backlog.append(_Round(keep, path))
            self._lock.notify_all()

    def _journal_round(self, writes: list[Write]) -> Path | None:
        """Store a round in the journal; None (kept in memory only) when the disk refuses it.

        A full disk must not stop publishing: the round is kept in memory, and
        the first refusal (and each 100th) is reported loudly.
        """
        if self._journal is None:
            return None
        try:
            path = self._journal.add([w.record() for w in writes])
        except OSError as exc:
            self.journal_failures += 1
            self._journal_refusing = True
            if self.journal_failures == 1 or self.journal_failures % 100 == 0:
                logger.error(
                    "cannot keep results in the journal on local disk (%s; %d round(s) so far): "
                    "they wait in memory instead and are lost if this process dies before "
                    "Tiled has them",
                    exc,
                    self.journal_failures,
                )
            return None
        if self._journal_refusing:
            self._journal_refusing = False
            logger.warning("the results journal on local disk takes rounds again")
        return path

    def _drain(self) -> None:
        """Write the queued rounds in order, until done or Tiled fails us."""
        while self._backlog and time.monotonic() >= self._retry_at:
            head = self._backlog[0]
            try:
                writes = head.load()
            except FileNotFoundError:
                writes = []  # another publisher adopted and wrote it
            except journal.CorruptRound as exc:
                self._failed += 1
                self._journal.quarantine(exc.path, exc.reason)
                head.path, writes = None, []
            while head.done < len(writes):
                if self._released:  # closed meanwhile: the journal is another publisher's now
                    return
                try:
                    self._apply(writes[head.done])
                except Exception as exc:
                    if self._retry_later(writes[head.done], exc):
                        return
                else:
                    self._written += 1
                    self._backoff.succeeded()
                head.done += 1
            if head.path is not None:
                self._journal.remove(head.path)
            with self._lock:
                self._backlog.popleft()
                barriers = head.barriers
                written_all = not self._backlog
            if written_all:  # what the planner holds meanwhile can go now, not in 10 ms
                with contextlib.suppress(queue.Full):
                    self._ops.put_nowait(_WRITTEN)
            for barrier in barriers:
                barrier.set()
            if self._outage_since is not None:
                logger.warning(
                    "Tiled is reachable again after %.0f s; publishing the results kept meanwhile",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None

    def _retry_later(self, write: Write, exc: Exception) -> bool:
        """Decide after a failed write: True to retry it later, False to skip it."""
        write.verify = True  # the request may have reached Tiled before it failed
        delay = self._backoff.next_delay(exc)
        if delay is not None:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                logger.error(
                    "cannot write to Tiled (%s: %s); results are kept on local disk and "
                    "retried with backoff, the scan goes on",
                    type(exc).__name__,
                    exc,
                )
            self._retry_at = time.monotonic() + delay
            if not isinstance(exc, httpx.HTTPStatusError):
                self._root = None  # connect afresh: the server may have restarted
            return True
        self._failed += 1
        logger.error(
            "could not write %s %s to Tiled, skipped: %s: %s",
            write.kind,
            "/".join(write.path),
            type(exc).__name__,
            exc,
        )
        return False

    def _leave(self) -> None:
        """Hand what Tiled has not taken to a later publisher (once).

        Called by ``close()`` too when the writer thread is still inside a request
        (tiled's client retries a refused connection for up to 45 s): that thread
        then writes nothing more once its request returns.
        """
        with self._lock:
            if self._journal is None or self._released:
                return
            self._released = True
        left = self._journal.release()
        if left:
            logger.error(
                "Tiled did not take %d round(s) of results before SmartLab closed; they are "
                "kept on local disk and written when SmartLab next starts with this server",
                left,
            )

    # -- deciding the writes -------------------------------------------------

    def _container(self, parent: tuple[str, ...], key: str, **kwargs: Any) -> list[Write]:
        path = (*parent, key)
        if path in self._planned:
            return []
        self._planned.add(path)
        return [Write("container", parent, key, **kwargs)]

    def _array_part(self, parent: tuple[str, ...], data: Any, **kwargs: Any) -> list[Write]:
        """The writes that add the next array part under ``parent`` (made on first use)."""
        writes = self._container(parent[:-1], parent[-1])
        index = self._next_index.get(parent, 0)
        self._next_index[parent] = index + 1
        return [*writes, Write("array", parent, part_key(index), data=data, **kwargs)]

    def _plan_open(self, key: str, metadata: dict[str, Any]) -> list[Write]:
        self._run_of[key] = (metadata.get("run_uid"), metadata.get("plugin"))
        return self._container((), key, metadata=metadata, specs=[ANALYSIS_SPEC])

    def _plan_close(self, key: str, metadata: dict[str, Any]) -> list[Write]:
        writes = [Write("metadata", (), key, metadata=metadata)]
        run_uid, plugin = self._run_of.pop(key, (None, None))
        if run_uid:  # the raw run names its analyses: findable from the run itself
            link = {"plugin": plugin, "analysis": key}
            writes.append(Write("link", (), str(run_uid), metadata=link))
        return writes

    def _plan_pending(
        self,
        appends: dict[tuple[str, str], list[tuple]],
        errors: dict[str, list[ErrorRecord]],
        only: str | None = None,
    ) -> list[Write]:
        writes: list[Write] = []
        for key, stream in [k for k in appends if only is None or k[0] == only]:
            for group in _same_shape_groups(appends.pop((key, stream))):
                writes += self._plan_append(key, stream, group)
        for key in [k for k in errors if only is None or k == only]:
            records = [asdict(r) for r in errors.pop(key)]
            columns = {name: [r[name] for r in records] for name in records[0]}
            writes += self._append_rows((key,), ERRORS_KEY, rows(columns))
        return writes

    def _append_rows(self, parent: tuple[str, ...], key: str, table: pa.Table) -> list[Write]:
        """The write that appends ``table`` to the appendable table ``parent/key``."""
        path = (*parent, key)
        schema = self._schemas.setdefault(path, table.schema)
        table, dropped = conform(table, schema)
        if dropped and path not in self._dropped_columns:
            self._dropped_columns.add(path)
            logger.error(
                "%s: results with columns %s the table's first rows did not have; they are "
                "not published (a plugin should return the same scalars for every event)",
                "/".join(path),
                dropped,
            )
        before = self._rows.get(path, 0)
        self._rows[path] = before + table.num_rows
        return [Write("rows", parent, key, data=table, rows_before=before)]

    def _plan_append(self, key: str, stream: str, ops: list[tuple]) -> list[Write]:
        writes = self._container((key,), stream, metadata={"stream": stream}, specs=[STREAM_SPEC])
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
            writes += self._append_rows((key, stream), EVENTS_KEY, rows(columns))
        for name, value in first.arrays.items():
            stacked = np.concatenate([np.asarray(r.arrays[name]) for r in results])
            extra = first.dims.get(name) or tuple(f"dim_{i}" for i in range(1, np.ndim(value)))
            writes += self._array_part(
                (key, stream, name),
                stacked,
                dims=["event", *extra],
                metadata={"seq_num": seq_num.tolist()},
            )
        return writes

    # -- carrying them out ---------------------------------------------------

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
            self._client = client
            self._handles = {}
        return self._root

    def _node(self, path: tuple[str, ...]):
        root = self._client_root()
        node = self._handles.get(path)
        if node is None:
            node = root
            for key in path:
                node = node[key]
            self._handles[path] = node
        return node

    def _apply(self, write: Write) -> None:
        if write.kind == "metadata":
            self._node(write.path).update_metadata(metadata=write.metadata)
            return
        if write.kind == "rows":
            self._write_rows(write)
            return
        if write.kind == "link":
            self._link_from_run(write)
            return
        parent = self._node(write.parent)
        if write.kind == "container":
            try:
                node = parent.create_container(
                    write.key, metadata=write.metadata, specs=write.specs
                )
            except Exception as exc:
                if not is_conflict(exc):
                    raise
                node = parent[write.key]  # made before a crash or a lost answer: keep it
            self._handles[write.path] = node
            return
        try:
            parent.write_array(write.data, key=write.key, dims=write.dims, metadata=write.metadata)
        except Exception as exc:
            if not is_conflict(exc):
                raise
            # Made before a crash or a lost answer, perhaps without its data (the node and
            # its data are two requests): write the same data into it again.
            parent[write.key].write(write.data)

    def _link_from_run(self, write: Write) -> None:
        """Name the analysis in its raw run's metadata (``smartlab_analyses``), if that run
        is in Tiled (``raw=False``, or a raw writer that failed, leaves none: nothing to do)."""
        self._client_root()
        if write.key not in self._client:
            return
        run = self._client[write.key]
        links = {k: list(v) for k, v in (run.metadata.get(RUN_LINKS_KEY) or {}).items()}
        path = f"{ROOT_KEY}/{write.metadata['analysis']}"
        paths = links.setdefault(str(write.metadata["plugin"]), [])
        if path not in paths:
            paths.append(path)
            run.update_metadata(metadata={RUN_LINKS_KEY: links})

    def _write_rows(self, write: Write) -> None:
        """Append ``write``'s rows, making the table on its first append.

        Appending is not idempotent, so a write sent again (``verify``) first
        counts the rows there and appends only those still missing.
        """
        table: pa.Table = write.data
        node = self._handles.get(write.path)
        if node is None:
            parent = self._node(write.parent)
            if write.verify and write.key in parent:
                node = parent[write.key]
            else:
                try:
                    node = parent.create_appendable_table(table.schema, key=write.key)
                except Exception as exc:
                    if not is_conflict(exc):
                        raise
                    node = parent[write.key]  # made before a crash or a lost answer
            self._handles[write.path] = node
        if write.verify:
            there = len(node.read(columns=[table.column_names[0]])) - (write.rows_before or 0)
            if there >= table.num_rows:
                return
            table = table.slice(max(there, 0))
        node.append_partition(0, table)


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
