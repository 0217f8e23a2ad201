"""The analysis worker: batches through plugins, each plugin's faults its own.

The worker receives shipments of documents (from the RunEngine-side callback,
or from a stored run when replaying), assembles them into batches, gives each
enabled plugin the fields its ``DataSpec`` selects, and hands the results to
the publisher. A plugin that raises is recorded against the events it failed
on and, after ``max_failures`` failures in one run, disabled for that run;
the other plugins and the scan carry on.

Each plugin of a run has a lane of its own (:mod:`smartlab_plugins.lanes`),
so a plugin that is slow, hangs or leaks never holds up the others:

- too slow: when its lane is full (``lane_capacity`` batches), the worker
  waits for room for at most ``plugin_timeout`` (``backpressure="spill"``,
  the default: the documents wait meanwhile, on disk if need be), then
  disables the plugin for the run (stage ``timeout``); with
  ``backpressure="drop"`` the batch is skipped for that plugin at once and
  recorded (stage ``skipped``, with the events' seq_nums);
- hung: a call that takes longer than ``plugin_timeout`` seconds disables
  the plugin for the rest of the run, recorded (stage ``timeout``) with the
  event it was on and where its thread is stuck; the next run starts it on a
  fresh thread;
- leaking: when the process' memory has grown by more than
  ``max_growth_mb`` across the plugin's calls in one run (measured over the
  calls that ran while no other plugin's did: the only ones for which
  resident memory says who grew it), it is disabled for the run (stage
  ``memory``). What it holds is given back only when the worker restarts.

With a compute engine (:mod:`smartlab_plugins.compute`), the batches of
stateless plugins are analysed there; their lanes wait for the results in
turn, so all of the above holds for them too.
"""

from __future__ import annotations

import logging
import reprlib
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from smartlab_plugins.callbacks.batching import BatchAssembler, DocumentProblem, RawBatch, short_uid
from smartlab_plugins.callbacks.external import ReadPolicy
from smartlab_plugins.compute import DaskEngine
from smartlab_plugins.hookspecs import DataSpec, EventBatch, PluginInfo, Results, RunContext
from smartlab_plugins.lanes import Lane, format_frames
from smartlab_plugins.manager import PluginManager, UnknownPluginError
from smartlab_plugins.publish import ErrorRecord, Publisher, RawRunWriter

if TYPE_CHECKING:
    from distributed import Future

logger = logging.getLogger(__name__)

START_KEY = "smartlab"
RESERVED_COLUMNS = frozenset({"seq_num", "time"})
#: Seconds a run's close waits for the raw-run writer to reach its stop document.
RAW_WAIT = 5.0
NUMERIC_KINDS = frozenset("biuf")


@dataclass
class Shipment:
    """Documents sent to the worker in one go, and the RunEngine side's drop counts."""

    docs: list[tuple[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class _Analysis:
    """One plugin's work on one run."""

    plugin: str
    info: PluginInfo
    context: RunContext
    key: str | None = None  # set when the plugin first has data in this run
    fields: dict[str, list[str]] = field(default_factory=dict)
    #: Per stream, fields with a leading frames-per-event axis the plugin sees per frame.
    framed: dict[str, set[str]] = field(default_factory=dict)
    events: int = 0
    #: Events of its fields it could not analyse: refused (NaN, ...), failed, or lost.
    rejected: int = 0
    failures: int = 0
    errors: int = 0
    disabled: bool = False
    lane: Lane | None = None
    summary: Any = None
    skipped: int = 0
    timed_out: bool = False


@dataclass
class _Run:
    uid: str
    analyses: list[_Analysis]
    started: float = field(default_factory=time.monotonic)
    problems: int = 0
    dropped: int = 0
    #: Events lost whole before any plugin saw them (malformed, unreadable).
    lost_events: int = 0

    @property
    def active(self) -> list[_Analysis]:
        """The analyses whose plugin has had data (or a problem to record) in this run."""
        return [a for a in self.analyses if a.key is not None]


class Worker:
    """Run the enabled plugins over the documents of live or stored runs."""

    def __init__(
        self,
        plugins: PluginManager,
        publisher: Publisher,
        enabled: Iterable[str] | None = None,
        max_batch: int = 256,
        max_failures: int = 3,
        mode: str = "live",
        annotations: Mapping[str, Any] | None = None,
        on_normalized: Callable[[str, Mapping[str, Any]], None] | None = None,
        plugin_timeout: float = 30.0,
        lane_capacity: int = 64,
        max_growth_mb: float = 2048.0,
        backpressure: str = "spill",
        compute: DaskEngine | None = None,
        policy: ReadPolicy | None = None,
        raw: RawRunWriter | None = None,
    ) -> None:
        """``policy`` decides which detector files may be read (default: the open
        in-process policy); ``raw``, the raw-run writer, is asked for each run's
        write failures when the run closes."""
        self.plugins = plugins
        self.publisher = publisher
        self.enabled: list[str] = (
            plugins.resolve(enabled) if enabled is not None else plugins.names()
        )
        self.max_failures = max_failures
        self.plugin_timeout = plugin_timeout
        self.lane_capacity = lane_capacity
        self.max_growth_mb = max_growth_mb
        self.backpressure = backpressure
        #: Where stateless plugins' batches are analysed; None: here, on their lanes.
        self.compute = compute
        self.mode = mode
        self.annotations = dict(annotations or {})
        self.raw = raw
        self._assembler = BatchAssembler(
            self, max_batch=max_batch, on_normalized=on_normalized, policy=policy
        )
        self._runs: dict[str, _Run] = {}
        self._dropped: dict[str, int] = {}
        self.summaries: list[dict[str, Any]] = []
        #: Live views: plugins whose results are also passed to ``on_results`` as they come.
        self.live: dict[str, dict[str, bool]] = {}
        self.on_results: Callable[[dict[str, Any]], None] | None = None

    # -- input -------------------------------------------------------------

    def process(self, shipment: Shipment) -> None:
        """Take a shipment of documents; analyse what is complete."""
        self._dropped.update(shipment.dropped)
        for name, doc in shipment.docs:
            self._assembler(name, doc)
        self._assembler.flush()

    def enable(self, name: str) -> None:
        name = self.plugins.resolve([name])[0]
        if name not in self.enabled:
            self.enabled.append(name)

    def disable(self, name: str) -> None:
        name = self.plugins.resolve([name])[0]
        if name in self.enabled:
            self.enabled.remove(name)

    def close(self) -> None:
        """Mark runs still open as interrupted; the publisher is closed by its owner."""
        for run in list(self._runs.values()):
            for analysis in run.active:
                if analysis.lane is not None:
                    analysis.lane.stop()
                self.publisher.close_analysis(
                    analysis.key, self._closing_metadata(run, analysis, "interrupted")
                )
            logger.warning(
                "run %s: closed before its stop document; results marked interrupted",
                short_uid(run.uid),
            )
        self._runs.clear()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until the plugins have analysed everything given so far; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for run in list(self._runs.values()):
            for analysis in run.active:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if analysis.lane is not None and not analysis.lane.wait_idle(left):
                    return False
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "open_runs": list(self._runs),
            "enabled": list(self.enabled),
            "publisher": self.publisher.stats(),
            "raw_failures": self.raw.failures if self.raw is not None else 0,
            "data_roots": self._assembler.policy.describe(),
        }

    # -- BatchSink ---------------------------------------------------------

    def open_run(self, start: Mapping[str, Any]) -> None:
        """Note the run's plugins; each starts only when a stream brings it data."""
        uid = start["uid"]
        analyses = [
            _Analysis(
                name,
                self.plugins.info(name),
                RunContext(uid, start, options=_plugin_options(start, name)),
            )
            for name in self._plugins_for_run(start)
        ]
        self._runs[uid] = _Run(uid, analyses)

    def open_stream(self, run_uid: str, descriptor: Mapping[str, Any]) -> None:
        run = self._runs[run_uid]
        stream = descriptor.get("name", "primary")
        for analysis in run.analyses:
            analysis.context.descriptors[stream] = descriptor
            selected, problems = select_fields(analysis.info.accepts, stream, descriptor)
            analysis.fields[stream] = selected
            analysis.framed[stream] = framed_fields(analysis.info.accepts, descriptor, selected)
            if (selected or problems) and analysis.key is None:
                self._activate(run, analysis)
            for problem in problems:
                self._record(run, analysis, "input", problem, stream=stream)

    def _activate(self, run: _Run, analysis: _Analysis) -> None:
        """Publish the analysis node and set the plugin up for this run.

        A plugin whose set-up fails (e.g. no model) is disabled for the run at
        once: it has nothing to analyse with.
        """
        start, info = analysis.context.start, analysis.info
        analysis.key = self.publisher.open_analysis(
            {
                **self.annotations,
                "run_uid": run.uid,
                "scan_id": start.get("scan_id"),
                "plan_name": start.get("plan_name"),
                "plugin": analysis.plugin,
                "plugin_version": info.version,
                "model": info.model.name if info.model else None,
                "model_version": info.model.version if info.model else None,
                "sha256": info.model.sha256 if info.model else None,
                "device": info.device,
                "compute": self.compute.address if self._remote(analysis) else None,
                "accepts": info.accepts.describe(),
                "units": info.resolve_units(analysis.context.descriptors, analysis.fields),
                "mode": self.mode,
                "status": "running",
                "started": time.time(),
            }
        )
        logger.info("run %s plugin %s: analysing", short_uid(run.uid), analysis.plugin)
        analysis.lane = Lane(analysis.plugin, capacity=self.lane_capacity)
        analysis.lane.submit(lambda: self._start_plugin(run, analysis), "start_run")

    def _start_plugin(self, run: _Run, analysis: _Analysis) -> None:
        """The plugin's ``smartlab_start_run``, on its lane."""
        failures = analysis.failures
        self._call(run, analysis, "smartlab_start_run", stage="start_run", run=analysis.context)
        if analysis.failures > failures and not analysis.disabled:
            analysis.disabled = True
            self._record(run, analysis, "disabled", "disabled for this run: set-up failed")

    def add_batch(self, run_uid: str, raw: RawBatch) -> None:
        run = self._runs[run_uid]
        self._watch(run)
        for analysis in run.analyses:
            names = analysis.fields.get(raw.stream)
            if analysis.disabled or not names:
                continue
            if any(name not in raw.data for name in names):  # a file-backed field was lost
                analysis.rejected += len(raw)
                continue
            batch = self._checked_batch(run, analysis, raw, names)
            if batch is not None and len(batch):
                self._submit(run, analysis, batch)

    def _submit(self, run: _Run, analysis: _Analysis, batch: EventBatch) -> None:
        """Queue a batch on the plugin's lane, or record it as skipped if the lane is full."""
        first, last = int(batch.seq_num[0]), int(batch.seq_num[-1])
        what = f"events {first}-{last} of stream {batch.stream!r}"
        wait = self.plugin_timeout if self.backpressure == "spill" else 0.0
        pending = self._send(analysis, batch)
        if analysis.lane.submit(
            lambda: self._run_batch(run, analysis, batch, pending),
            what,
            batch.stream,
            first,
            wait=wait,
        ):
            return
        if pending is not None:
            pending.cancel()
        if wait:
            self._timed_out(run, analysis, f"its lane stayed full for {wait:g} s, at {what}")
            return
        analysis.skipped += len(batch)
        self._record(
            run,
            analysis,
            "skipped",
            f"not analysed: the plugin is behind ({self.lane_capacity} batches already "
            f"waiting), {what} skipped",
            stream=batch.stream,
            seq_num=first,
            error="PluginBehind",
        )

    def _run_batch(
        self, run: _Run, analysis: _Analysis, batch: EventBatch, pending: Future | None
    ) -> None:
        """Analyse one batch, on the plugin's lane; then check the memory its calls kept."""
        if analysis.disabled:
            if pending is not None:
                pending.cancel()
            return
        self._analyze(run, analysis, batch, pending)
        growth_mb = analysis.lane.growth / 2**20
        if growth_mb > self.max_growth_mb and not analysis.disabled:
            analysis.disabled = True
            message = (
                f"disabled for this run: memory grew by {growth_mb:.0f} MB over "
                f"{analysis.lane.measured_calls} of its calls that ran alone "
                f"(limit max_growth_mb={self.max_growth_mb:g})"
            )
            logger.error("run %s plugin %s: %s", short_uid(run.uid), analysis.plugin, message)
            self._record(
                run,
                analysis,
                "memory",
                message,
                stream=batch.stream,
                seq_num=int(batch.seq_num[-1]),
                error="PluginMemoryGrowth",
            )

    def _watch(self, run: _Run) -> None:
        """Disable, for this run, each plugin whose call has taken longer than the timeout."""
        for analysis in run.active:
            lane = analysis.lane
            if lane is not None and not lane.abandoned and lane.busy_for > self.plugin_timeout:
                self._timed_out(run, analysis)

    def _timed_out(self, run: _Run, analysis: _Analysis, what: str | None = None) -> None:
        lane = analysis.lane
        busy = lane.busy_for
        if what is None:
            what = (
                f"busy with {lane.current} for {busy:.0f} s"
                if busy > self.plugin_timeout
                else f"{lane.waiting} call(s) still waiting at the end of the run"
            )
        message = (
            f"no answer within plugin_timeout={self.plugin_timeout:g} s ({what}); "
            "skipped for the rest of the run"
        )
        logger.error("run %s plugin %s: %s", short_uid(run.uid), analysis.plugin, message)
        analysis.disabled = analysis.timed_out = True
        self._record(
            run,
            analysis,
            "timeout",
            message,
            stream=lane.current_stream,
            seq_num=lane.current_seq_num,
            error="PluginTimeout",
            traceback=lane.stack(),
        )
        lane.abandon()

    def close_run(self, stop: Mapping[str, Any]) -> None:
        run = self._runs.pop(stop["run_start"], None)
        if run is None:
            return
        run.dropped = self._dropped.pop(run.uid, 0)
        status_of_run = stop.get("exit_status", "success")
        self._finish_lanes(run, stop)
        raw_failures, raw_done = (
            self.raw.run_failures(run.uid, RAW_WAIT) if self.raw is not None else (0, True)
        )
        for analysis in run.active:
            metadata = self._closing_metadata(run, analysis, _status(run, analysis))
            metadata["run_exit_status"] = status_of_run
            metadata["raw_failures"] = raw_failures
            if not raw_done:
                metadata["raw_pending"] = True
            if analysis.summary is not None:
                metadata["summary"] = analysis.summary
            self.publisher.close_analysis(analysis.key, metadata)
        summary = {
            "run_uid": run.uid,
            "exit_status": status_of_run,
            "dropped": run.dropped,
            "rejected_documents": run.problems,
            "lost_events": run.lost_events,
            "raw_failures": raw_failures,
            "plugins": {
                a.plugin: {
                    "key": a.key,
                    "status": _status(run, a),
                    "events": a.events,
                    "rejected": a.rejected,
                    "errors": a.errors,
                    "disabled": a.disabled,
                    "skipped": a.skipped,
                    "timed_out": a.timed_out,
                }
                for a in run.active
            },
        }
        self.summaries.append(summary)
        _log_run_summary(summary)

    def _finish_lanes(self, run: _Run, stop: Mapping[str, Any]) -> None:
        """Let each plugin finish the run on its lane.

        Lanes are waited for together, for at most ``plugin_timeout`` seconds
        in all: a plugin still busy then (hung, or too slow to catch up) is
        timed out and its remaining work skipped, so one plugin never keeps
        the next run waiting for long.
        """
        deadline = time.monotonic() + self.plugin_timeout
        unfinished = [a for a in run.active if a.lane is not None and not a.lane.abandoned]
        to_submit = {id(a) for a in unfinished if not a.disabled}
        while unfinished:
            still = []
            for analysis in unfinished:
                lane = analysis.lane
                if id(analysis) in to_submit and lane.submit(
                    self._finisher(run, analysis, stop), "finish_run"
                ):
                    to_submit.discard(id(analysis))
                if id(analysis) not in to_submit and lane.wait_idle(0):
                    lane.stop()
                elif time.monotonic() > deadline or lane.busy_for > self.plugin_timeout:
                    self._timed_out(run, analysis)
                else:
                    still.append(analysis)
            unfinished = still
            if unfinished:
                time.sleep(0.005)

    def _finisher(self, run: _Run, analysis: _Analysis, stop: Mapping[str, Any]):
        def finish() -> None:
            if not analysis.disabled:
                analysis.summary = self._call(
                    run,
                    analysis,
                    "smartlab_finish_run",
                    stage="finish_run",
                    run=analysis.context,
                    stop=stop,
                )

        return finish

    def reject(self, problem: DocumentProblem) -> None:
        run = self._runs.get(problem.run_uid) if problem.run_uid else None
        if run is None:
            logger.error("%s", problem)
            return
        run.problems += 1
        run.lost_events += problem.events
        logger.error("run %s: %s", short_uid(run.uid), problem)
        for analysis in run.active:
            record = ErrorRecord(
                plugin=analysis.plugin,
                stage="input",
                stream=problem.stream or "",
                seq_num=problem.seq_num if problem.seq_num is not None else -1,
                error="DocumentProblem",
                message=str(problem),
            )
            analysis.errors += 1
            self.publisher.record_errors(analysis.key, [record])

    # -- internals ---------------------------------------------------------

    def _plugins_for_run(self, start: Mapping[str, Any]) -> list[str]:
        """The session's enabled plugins, narrowed by the start document's ``smartlab`` key.

        ``smartlab: {"plugins": [...]}`` names exactly the plugins to run,
        ``smartlab: {"disable": [...]}`` removes some, ``smartlab: False`` runs none.
        """
        request = start.get(START_KEY)
        names = list(self.enabled)
        if request is None or request is True:
            return names
        if request is False:
            return []
        if not isinstance(request, Mapping):
            logger.error(
                "run %s: ignoring start['%s']=%r: expected a dict",
                start["uid"][:8],
                START_KEY,
                request,
            )
            return names
        wanted = _names(start, "plugins", request.get("plugins", names))
        disabled = set(_names(start, "disable", request.get("disable", ())))
        chosen = []
        for name in wanted:
            if name in self.plugins.names():
                chosen.append(name)
            else:
                logger.error(
                    "run %s: %s", start["uid"][:8], UnknownPluginError(name, self.plugins.names())
                )
        return [name for name in chosen if name not in disabled]

    def _checked_batch(
        self, run: _Run, analysis: _Analysis, raw: RawBatch, names: list[str]
    ) -> EventBatch | None:
        """The plugin's view of ``raw``, without the events its spec refuses."""
        spec = analysis.info.accepts
        keep = np.ones(len(raw), dtype=bool)
        for name in names:
            values = raw.data[name]
            if values.dtype.kind not in NUMERIC_KINDS:
                self._record(
                    run,
                    analysis,
                    "input",
                    f"field {name!r} is not numeric (dtype {values.dtype})",
                    stream=raw.stream,
                )
                analysis.rejected += len(raw)
                return None
            if spec.finite:
                flat = values.reshape(len(values), -1)
                bad = ~np.isfinite(flat).all(axis=1)
                for i in np.flatnonzero(bad & keep):
                    count = int((~np.isfinite(flat[i])).sum())
                    self._record(
                        run,
                        analysis,
                        "input",
                        f"field {name!r} has {count} NaN/inf value(s)",
                        stream=raw.stream,
                        seq_num=int(raw.seq_num[i]),
                    )
                keep &= ~bad
        analysis.rejected += int((~keep).sum())
        context = {
            k: v
            for k, v in raw.data.items()
            if k not in names and v.ndim == 1 and v.dtype.kind in NUMERIC_KINDS
        }
        framed = analysis.framed.get(raw.stream, set())
        data = {n: per_frame(raw.data[n]) if n in framed else raw.data[n] for n in names}
        batch = EventBatch(raw.stream, raw.seq_num, raw.time, data, context)
        return batch if keep.all() else batch.take(keep)

    def _remote(self, analysis: _Analysis) -> bool:
        """Whether the plugin's batches go to the compute engine."""
        return self.compute is not None and self.compute.runs(analysis.info)

    def _send(self, analysis: _Analysis, batch: EventBatch) -> Future | None:
        """Start the batch on the compute engine if it goes there (the lane waits for it
        in turn, so the engine works on the next batches meanwhile); None if it does not."""
        if not self._remote(analysis):
            return None
        return self.compute.submit(analysis.plugin, analysis.context, batch, analysis.info.gpu)

    def _analyze(
        self, run: _Run, analysis: _Analysis, batch: EventBatch, pending: Future | None = None
    ) -> None:
        try:
            results = (
                pending.result()
                if pending is not None
                else self.plugins.call(
                    "smartlab_analyze",
                    analysis.plugin,
                    run=analysis.context,
                    stream=batch.stream,
                    batch=batch,
                )
            )
            if results is not None:
                check_results(results, len(batch))
        except Exception as exc:
            if len(batch) > 1:  # find the events that fail; publish the others
                for i in range(len(batch)):
                    if analysis.disabled:
                        return
                    one = batch.take(slice(i, i + 1))
                    self._analyze(run, analysis, one, self._send(analysis, one))
                return
            analysis.rejected += 1
            self._failed(
                run, analysis, "analyze", exc, stream=batch.stream, seq_num=int(batch.seq_num[0])
            )
            return
        analysis.events += len(batch)
        if results is None or not (results.scalars or results.arrays):
            return
        self.publisher.append(analysis.key, batch.stream, batch.seq_num, batch.time, results)
        wanted = self.live.get(analysis.plugin)
        if wanted is not None and self.on_results is not None:
            self.on_results(live_message(run.uid, analysis.plugin, batch, results, **wanted))

    def _call(self, owner: _Run, analysis: _Analysis, hook: str, stage: str, **kwargs: Any) -> Any:
        """Call one plugin's hook; a failure is recorded and returns None."""
        try:
            return self.plugins.call(hook, analysis.plugin, **kwargs)
        except Exception as exc:
            self._failed(owner, analysis, stage, exc)
            return None

    def _failed(
        self,
        run: _Run,
        analysis: _Analysis,
        stage: str,
        exc: Exception,
        stream: str = "",
        seq_num: int = -1,
    ) -> None:
        analysis.failures += 1
        where = f" on event {seq_num} of stream {stream!r}" if seq_num >= 0 else ""
        logger.error(
            "run %s plugin %s: %s failed%s: %s: %s",
            short_uid(run.uid),
            analysis.plugin,
            stage,
            where,
            type(exc).__name__,
            exc,
        )
        record = ErrorRecord(
            plugin=analysis.plugin,
            stage=stage,
            stream=stream,
            seq_num=seq_num,
            error=type(exc).__name__,
            message=str(exc),
            traceback=_traceback_summary(exc),
        )
        analysis.errors += 1
        self.publisher.record_errors(analysis.key, [record])
        if analysis.failures >= self.max_failures and not analysis.disabled:
            analysis.disabled = True
            message = f"disabled for this run after {analysis.failures} failures"
            logger.error("run %s plugin %s: %s", short_uid(run.uid), analysis.plugin, message)
            self._record(run, analysis, "disabled", message)

    def _record(
        self,
        run: _Run,
        analysis: _Analysis,
        stage: str,
        message: str,
        stream: str = "",
        seq_num: int = -1,
        error: str | None = None,
        traceback: str = "",
    ) -> None:
        if stage == "input":
            logger.error(
                "run %s plugin %s: %s%s",
                short_uid(run.uid),
                analysis.plugin,
                message,
                f" (event {seq_num})" if seq_num >= 0 else "",
            )
        analysis.errors += 1
        self.publisher.record_errors(
            analysis.key,
            [
                ErrorRecord(
                    plugin=analysis.plugin,
                    stage=stage,
                    stream=stream,
                    seq_num=seq_num,
                    error=error or ("InputError" if stage == "input" else "PluginDisabled"),
                    message=message,
                    traceback=traceback,
                )
            ],
        )

    def _closing_metadata(self, run: _Run, analysis: _Analysis, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "finished": time.time(),
            "events": analysis.events,
            "rejected": analysis.rejected,
            "lost": run.lost_events,
            "errors": analysis.errors,
            "dropped": run.dropped,
            "skipped": analysis.skipped,
            "timed_out": analysis.timed_out,
            "streams": sorted(analysis.context.descriptors),
        }


def live_message(
    run_uid: str,
    plugin: str,
    batch: EventBatch,
    results: Results,
    arrays: bool = False,
    inputs: bool = False,
) -> dict[str, Any]:
    """A batch's results for live views: scalars and context for every event, and the
    last event's result arrays and input fields only if asked (they can be large)."""
    message: dict[str, Any] = {
        "run_uid": run_uid,
        "plugin": plugin,
        "stream": batch.stream,
        "seq_num": batch.seq_num.tolist(),
        "scalars": {k: np.asarray(v).tolist() for k, v in results.scalars.items()},
        "context": {k: np.asarray(v).tolist() for k, v in batch.context.items()},
    }
    if arrays:
        message["arrays"] = {k: np.asarray(v)[-1] for k, v in results.arrays.items()}
    if inputs:
        message["inputs"] = {k: np.asarray(v)[-1] for k, v in batch.data.items()}
    return message


def _names(start: Mapping[str, Any], key: str, value: Any) -> list[str]:
    """``start['smartlab'][key]`` as a list of plugin names (one name may stand alone);
    anything else is logged and read as no names."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    logger.error(
        "run %s: ignoring start['%s'][%r]=%s: expected a list of plugin names",
        str(start.get("uid", "?"))[:8],
        START_KEY,
        key,
        reprlib.repr(value),
    )
    return []


def _plugin_options(start: Mapping[str, Any], plugin: str) -> Mapping[str, Any]:
    request = start.get(START_KEY)
    options = request.get("options", {}) if isinstance(request, Mapping) else {}
    chosen = options.get(plugin, {}) if isinstance(options, Mapping) else {}
    return chosen if isinstance(chosen, Mapping) else {}


def _status(run: _Run, analysis: _Analysis) -> str:
    """How an analysis ended: ``disabled``, ``partial`` (events it should have analysed
    and did not: rejected, failed, lost, skipped or dropped; the counts are beside it in
    the metadata), or ``complete``."""
    if analysis.disabled:
        return "disabled"
    if analysis.rejected or analysis.skipped or run.lost_events or run.dropped:
        return "partial"
    return "complete"


def framed_fields(spec: DataSpec, descriptor: Mapping[str, Any], selected: list[str]) -> set[str]:
    """The selected fields a plugin sees one frame at a time (see :func:`per_frame`).

    A file-backed field declared ``[N, *frame]`` whose frame, not the whole,
    fits the plugin's ``ndims`` (an ophyd-async detector's ``[1, H, W]`` for
    a plugin of 2-D images).
    """
    data_keys = descriptor.get("data_keys", {})
    framed = set()
    for name in selected:
        key = data_keys.get(name, {})
        shape = tuple(key.get("shape") or ())
        if "external" in key and len(shape) - 1 in spec.ndims and len(shape) not in spec.ndims:
            framed.add(name)
    return framed


def per_frame(values: np.ndarray) -> np.ndarray:
    """A batch of ``[N, *frame]`` events as a plugin of frames sees it: the frame for N = 1,
    the sum of the N frames (one point's exposures, counts add) for N > 1."""
    if values.ndim < 2:
        return values
    return values[:, 0] if values.shape[1] == 1 else values.sum(axis=1)


def select_fields(
    spec: DataSpec, stream: str, descriptor: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The fields of ``descriptor`` a plugin with ``spec`` reads, and problems found.

    Named fields that exist with the wrong shape or dtype are problems; for
    unnamed selection, fields that do not fit are simply not selected.
    """
    if stream not in spec.streams:
        return [], []
    data_keys = descriptor.get("data_keys", {})
    selected, problems = [], []
    candidates = spec.fields or tuple(data_keys)
    for name in candidates:
        key = data_keys.get(name)
        if key is None:
            continue
        shape = tuple(key.get("shape") or ())
        numeric = key.get("dtype") in ("number", "integer", "array")
        frame = shape[1:] if "external" in key and len(shape) not in spec.ndims else shape
        fits = len(frame) in spec.ndims and (spec.shape is None or frame == tuple(spec.shape))
        if numeric and fits:
            selected.append(name)
        elif spec.fields:
            wanted = f"shape {tuple(spec.shape)}" if spec.shape else f"{spec.ndims}-D"
            problems.append(
                f"field {name!r} has shape {shape} and dtype {key.get('dtype')!r}; "
                f"expected {wanted} numeric data"
            )
    return selected, problems


def check_results(results: Results, n: int) -> None:
    """Raise ValueError unless ``results`` has one entry per event of an ``n``-event batch."""
    if not isinstance(results, Results):
        raise TypeError(
            f"smartlab_analyze must return Results or None, got {type(results).__name__}"
        )
    for kind, values in (("scalar", results.scalars), ("array", results.arrays)):
        for name, value in values.items():
            if name in RESERVED_COLUMNS:
                raise ValueError(f"result name {name!r} is reserved")
            length = len(value) if np.ndim(value) else 0
            if length != n:
                raise ValueError(
                    f"{kind} result {name!r} has {length} entries for a batch of {n} events"
                )


def _traceback_summary(exc: BaseException, limit: int = 3) -> str:
    return format_frames(traceback.extract_tb(exc.__traceback__)[-limit:])


def _log_run_summary(summary: Mapping[str, Any]) -> None:
    parts = [
        f"{name}: {p['events']} events, {p['errors']} errors"
        + (" (disabled)" if p["disabled"] else "")
        for name, p in summary["plugins"].items()
    ]
    level = logging.WARNING if summary["dropped"] or summary["rejected_documents"] else logging.INFO
    logger.log(
        level,
        "run %s finished (%s): %s; %d documents dropped, %d rejected",
        summary["run_uid"][:8],
        summary["exit_status"],
        "; ".join(parts) or "no plugins",
        summary["dropped"],
        summary["rejected_documents"],
    )
