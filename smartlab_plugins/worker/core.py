"""The analysis worker: batches through plugins, each plugin's faults its own.

The worker receives shipments of documents (from the RunEngine-side callback,
or from a stored run when replaying), has them assembled into batches
(:mod:`smartlab_plugins.assembly`), gives each plugin chosen for the run
(:mod:`~smartlab_plugins.worker.selection`) the fields its ``DataSpec``
selects, checked (:mod:`~smartlab_plugins.worker.validation`), on the
plugin's own lane (:mod:`~smartlab_plugins.worker.supervision`), and hands the
results to the publisher. What goes wrong is recorded against the analysis
(:mod:`~smartlab_plugins.worker.records`); a plugin that raises
``max_failures`` times in one run is disabled for that run; the other
plugins and the scan carry on.

With a compute engine (:mod:`smartlab_plugins.compute`), the batches of
stateless plugins are analysed there; their lanes wait for the results in
turn, so the supervision rules hold for them too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from smartlab_plugins.assembly.batching import BatchAssembler, DocumentProblem, RawBatch
from smartlab_plugins.assembly.external import ReadPolicy
from smartlab_plugins.compute import DaskEngine
from smartlab_plugins.hookspecs import EventBatch, RunContext
from smartlab_plugins.manager import PluginManager
from smartlab_plugins.protocol import Limits, Shipment
from smartlab_plugins.publish import Publisher, RawRunWriter
from smartlab_plugins.run_index import short_uid
from smartlab_plugins.worker import records, selection, validation
from smartlab_plugins.worker.records import Analysis, Recorder, RunState
from smartlab_plugins.worker.supervision import Supervisor

if TYPE_CHECKING:
    from distributed import Future

logger = logging.getLogger(__name__)

#: Seconds a run's close waits for the raw-run writer to reach its stop document.
RAW_WAIT = 5.0


class Worker:
    """Run the enabled plugins over the documents of live or stored runs."""

    def __init__(
        self,
        plugins: PluginManager,
        publisher: Publisher,
        enabled: Iterable[str] | None = None,
        limits: Limits = Limits(),  # noqa: B008 (frozen)
        mode: str = "live",
        annotations: Mapping[str, Any] | None = None,
        on_normalized: Callable[[str, Mapping[str, Any]], None] | None = None,
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
        self.recorder = Recorder(publisher, limits.max_failures)
        self.supervisor = Supervisor(self.recorder, limits)
        #: Where stateless plugins' batches are analysed; None: here, on their lanes.
        self.compute = compute
        self.mode = mode
        self.annotations = dict(annotations or {})
        self.raw = raw
        self._assembler = BatchAssembler(
            self, max_batch=limits.max_batch, on_normalized=on_normalized, policy=policy
        )
        self._runs: dict[str, RunState] = {}
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
        """Enable a plugin for the following runs."""
        name = self.plugins.resolve([name])[0]
        if name not in self.enabled:
            self.enabled.append(name)

    def disable(self, name: str) -> None:
        """Disable a plugin for the following runs."""
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
                    analysis.key, records.closing_metadata(run, analysis, "interrupted")
                )
            logger.warning(
                "run %s: closed before its stop document; results marked interrupted",
                short_uid(run.uid),
            )
        self._runs.clear()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until the plugins have analysed everything given so far; False on timeout."""
        return self.supervisor.wait_idle(self._runs.values(), timeout)

    def stats(self) -> dict[str, Any]:
        """Open runs, enabled plugins, the publisher's and raw writer's counts, read policy."""
        return {
            "open_runs": list(self._runs),
            "enabled": list(self.enabled),
            "publisher": self.publisher.stats(),
            "raw_failures": self.raw.failures if self.raw is not None else 0,
            "data_roots": self._assembler.policy.describe(),
        }

    # -- BatchSink: what the assembler calls --------------------------------

    def open_run(self, start: Mapping[str, Any]) -> None:
        """Note the run's plugins; each starts only when a stream brings it data."""
        uid = start["uid"]
        chosen = selection.plugins_for_run(start, self.enabled, self.plugins.names())
        analyses = [
            Analysis(
                name,
                self.plugins.info(name),
                RunContext(uid, start, options=selection.plugin_options(start, name)),
            )
            for name in chosen
        ]
        self._runs[uid] = RunState(uid, analyses)

    def open_stream(self, run_uid: str, descriptor: Mapping[str, Any]) -> None:
        """Choose each plugin's fields of a new stream; start the plugins it brings data."""
        run = self._runs[run_uid]
        stream = descriptor.get("name", "primary")
        for analysis in run.analyses:
            spec = analysis.info.accepts
            analysis.context.descriptors[stream] = descriptor
            selected, problems = validation.select_fields(spec, stream, descriptor)
            analysis.fields[stream] = selected
            analysis.framed[stream] = validation.framed_fields(spec, descriptor, selected)
            if (selected or problems) and analysis.key is None:
                self._activate(run, analysis)
            for problem in problems:
                self.recorder.record(run, analysis, "input", problem, stream=stream)

    def add_batch(self, run_uid: str, raw: RawBatch) -> None:
        """Give each plugin of the run its checked view of a batch, on its lane."""
        run = self._runs[run_uid]
        self.supervisor.watch(run)
        for analysis in run.analyses:
            names = analysis.fields.get(raw.stream)
            if analysis.disabled or not names:
                continue
            if any(name not in raw.data for name in names):  # a file-backed field was lost
                analysis.rejected += len(raw)
                continue
            framed = analysis.framed.get(raw.stream, set())
            checked = validation.checked_batch(analysis.info.accepts, raw, names, framed)
            analysis.rejected += checked.rejected
            for problem in checked.problems:
                self.recorder.record(
                    run, analysis, "input", problem.message, raw.stream, problem.seq_num
                )
            if checked.batch is not None and len(checked.batch):
                self._submit(run, analysis, checked.batch)

    def _submit(self, run: RunState, analysis: Analysis, batch: EventBatch) -> None:
        """Start the batch on the compute engine if it goes there, and queue it on the lane."""
        pending = self._send(analysis, batch)
        self.supervisor.submit(
            run, analysis, batch, lambda: self._run_batch(run, analysis, batch, pending), pending
        )

    def close_run(self, stop: Mapping[str, Any]) -> None:
        """Let the plugins finish the run, close its analyses, keep and log its summary."""
        run = self._runs.pop(stop["run_start"], None)
        if run is None:
            return
        run.dropped = self._dropped.pop(run.uid, 0)
        exit_status = stop.get("exit_status", "success")
        self.supervisor.finish(run, lambda analysis: self._finisher(run, analysis, stop))
        raw_failures, raw_done = (
            self.raw.run_failures(run.uid, RAW_WAIT) if self.raw is not None else (0, True)
        )
        for analysis in run.active:
            metadata = records.closing_metadata(run, analysis, records.status(run, analysis))
            metadata["run_exit_status"] = exit_status
            metadata["raw_failures"] = raw_failures
            if not raw_done:
                metadata["raw_pending"] = True
            if analysis.summary is not None:
                metadata["summary"] = analysis.summary
            self.publisher.close_analysis(analysis.key, metadata)
        summary = records.run_summary(run, exit_status, raw_failures)
        self.summaries.append(summary)
        records.log_run_summary(summary)

    def reject(self, problem: DocumentProblem) -> None:
        """Record a document the assembler refused against its run (or log it)."""
        run = self._runs.get(problem.run_uid) if problem.run_uid else None
        if run is None:
            logger.error("%s", problem)
            return
        self.recorder.rejected_document(run, problem)

    # -- a plugin's calls, on its lane ----------------------------------------

    def _activate(self, run: RunState, analysis: Analysis) -> None:
        """Publish the analysis node and set the plugin up for this run.

        A plugin whose set-up fails (e.g. no model) is disabled for the run at
        once: it has nothing to analyse with.
        """
        analysis.key = self.publisher.open_analysis(
            records.opening_metadata(
                run,
                analysis,
                annotations=self.annotations,
                mode=self.mode,
                compute=self.compute.address if self._remote(analysis) else None,
            )
        )
        logger.info("run %s plugin %s: analysing", short_uid(run.uid), analysis.plugin)
        self.supervisor.open_lane(analysis, lambda: self._start_plugin(run, analysis))

    def _start_plugin(self, run: RunState, analysis: Analysis) -> None:
        """The plugin's ``smartlab_start_run``."""
        failures = analysis.failures
        self._call(run, analysis, "smartlab_start_run", stage="start_run", run=analysis.context)
        if analysis.failures > failures and not analysis.disabled:
            analysis.disabled = True
            self.recorder.record(run, analysis, "disabled", "disabled for this run: set-up failed")

    def _run_batch(
        self, run: RunState, analysis: Analysis, batch: EventBatch, pending: Future | None
    ) -> None:
        """Analyse one batch; then check the memory its calls kept."""
        if analysis.disabled:
            if pending is not None:
                pending.cancel()
            return
        self._analyze(run, analysis, batch, pending)
        self.supervisor.check_memory(run, analysis, batch)

    def _finisher(
        self, run: RunState, analysis: Analysis, stop: Mapping[str, Any]
    ) -> Callable[[], None]:
        """The plugin's ``smartlab_finish_run``, whose answer is the analysis' summary."""

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

    def _remote(self, analysis: Analysis) -> bool:
        """Whether the plugin's batches go to the compute engine."""
        return self.compute is not None and self.compute.runs(analysis.info)

    def _send(self, analysis: Analysis, batch: EventBatch) -> Future | None:
        """Start the batch on the compute engine if it goes there (the lane waits for it
        in turn, so the engine works on the next batches meanwhile); None if it does not."""
        if not self._remote(analysis):
            return None
        return self.compute.submit(analysis.plugin, analysis.context, batch, analysis.info.gpu)

    def _analyze(
        self, run: RunState, analysis: Analysis, batch: EventBatch, pending: Future | None = None
    ) -> None:
        """Analyse a batch and publish its results; if it fails, find the events that fail
        one by one and publish the others."""
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
                validation.check_results(results, len(batch))
        except Exception as exc:
            if len(batch) > 1:
                for i in range(len(batch)):
                    if analysis.disabled:
                        return
                    one = batch.take(slice(i, i + 1))
                    self._analyze(run, analysis, one, self._send(analysis, one))
                return
            analysis.rejected += 1
            self.recorder.failed(
                run, analysis, "analyze", exc, stream=batch.stream, seq_num=int(batch.seq_num[0])
            )
            return
        analysis.events += len(batch)
        if results is None or not (results.scalars or results.arrays):
            return
        self.publisher.append(analysis.key, batch.stream, batch.seq_num, batch.time, results)
        wanted = self.live.get(analysis.plugin)
        if wanted is not None and self.on_results is not None:
            message = records.live_message(run.uid, analysis.plugin, batch, results, **wanted)
            self.on_results(message)

    def _call(
        self, owner: RunState, analysis: Analysis, hook: str, stage: str, **kwargs: Any
    ) -> Any:
        """Call one plugin's hook (``kwargs``: its arguments, ``run`` among them); a failure
        is recorded against ``owner`` and returns None."""
        try:
            return self.plugins.call(hook, analysis.plugin, **kwargs)
        except Exception as exc:
            self.recorder.failed(owner, analysis, stage, exc)
            return None
