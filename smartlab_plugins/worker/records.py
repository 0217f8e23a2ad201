"""What the worker keeps and tells about each analysis: its state, error records, metadata,
run summaries and live messages."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartlab_plugins.assembly.batching import DocumentProblem
from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext
from smartlab_plugins.lanes import Lane, format_frames
from smartlab_plugins.layout import ErrorRecord
from smartlab_plugins.publish import Publisher
from smartlab_plugins.run_index import short_uid

logger = logging.getLogger(__name__)


@dataclass
class Analysis:
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
class RunState:
    """A run the worker has open: its analyses and what was lost before any plugin saw it."""

    uid: str
    analyses: list[Analysis]
    started: float = field(default_factory=time.monotonic)
    problems: int = 0
    dropped: int = 0
    #: Events lost whole before any plugin saw them (malformed, unreadable).
    lost_events: int = 0

    @property
    def active(self) -> list[Analysis]:
        """The analyses whose plugin has had data (or a problem to record) in this run."""
        return [a for a in self.analyses if a.key is not None]


class Recorder:
    """Error records of the analyses, to the publisher, and the rule that disables a plugin.

    A plugin is disabled for the run after ``max_failures`` failures.
    """

    def __init__(self, publisher: Publisher, max_failures: int) -> None:
        self.publisher = publisher
        self.max_failures = max_failures

    def record(
        self,
        run: RunState,
        analysis: Analysis,
        stage: str,
        message: str,
        stream: str = "",
        seq_num: int = -1,
        error: str | None = None,
        traceback: str = "",
    ) -> None:
        """Record a problem that is not an exception: refused input, a plugin disabled, …"""
        if stage == "input":
            logger.error(
                "run %s plugin %s: %s%s",
                short_uid(run.uid),
                analysis.plugin,
                message,
                f" (event {seq_num})" if seq_num >= 0 else "",
            )
        self._publish(
            analysis,
            ErrorRecord(
                plugin=analysis.plugin,
                stage=stage,
                stream=stream,
                seq_num=seq_num,
                error=error or ("InputError" if stage == "input" else "PluginDisabled"),
                message=message,
                traceback=traceback,
            ),
        )

    def failed(
        self,
        run: RunState,
        analysis: Analysis,
        stage: str,
        exc: Exception,
        stream: str = "",
        seq_num: int = -1,
    ) -> None:
        """Record a plugin's exception; disable the plugin at ``max_failures``."""
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
        error, summary = type(exc).__name__, traceback_summary(exc)
        self.record(run, analysis, stage, str(exc), stream, seq_num, error, summary)
        if analysis.failures >= self.max_failures and not analysis.disabled:
            analysis.disabled = True
            message = f"disabled for this run after {analysis.failures} failures"
            logger.error("run %s plugin %s: %s", short_uid(run.uid), analysis.plugin, message)
            self.record(run, analysis, "disabled", message)

    def rejected_document(self, run: RunState, problem: DocumentProblem) -> None:
        """Record a malformed or unreadable document against every analysis of its run."""
        run.problems += 1
        run.lost_events += problem.events
        logger.error("run %s: %s", short_uid(run.uid), problem)
        for analysis in run.active:
            self._publish(
                analysis,
                ErrorRecord(
                    plugin=analysis.plugin,
                    stage="input",
                    stream=problem.stream or "",
                    seq_num=problem.seq_num if problem.seq_num is not None else -1,
                    error="DocumentProblem",
                    message=str(problem),
                ),
            )

    def _publish(self, analysis: Analysis, record: ErrorRecord) -> None:
        analysis.errors += 1
        self.publisher.record_errors(analysis.key, [record])


def status(run: RunState, analysis: Analysis) -> str:
    """How an analysis ended: ``disabled``, ``partial`` (events it should have analysed
    and did not: rejected, failed, lost, skipped or dropped; the counts are beside it in
    the metadata), or ``complete``."""
    if analysis.disabled:
        return "disabled"
    if analysis.rejected or analysis.skipped or run.lost_events or run.dropped:
        return "partial"
    return "complete"


def opening_metadata(
    run: RunState,
    analysis: Analysis,
    *,
    annotations: Mapping[str, Any],
    mode: str,
    compute: str | None,
) -> dict[str, Any]:
    """The analysis node's metadata when it is made: what analyses which run, and how."""
    start, info = analysis.context.start, analysis.info
    model = info.model
    return {
        **annotations,
        "run_uid": run.uid,
        "scan_id": start.get("scan_id"),
        "plan_name": start.get("plan_name"),
        "plugin": analysis.plugin,
        "plugin_version": info.version,
        "model": model.name if model else None,
        "model_version": model.version if model else None,
        "sha256": model.sha256 if model else None,
        "device": info.device,
        "compute": compute,
        "accepts": info.accepts.describe(),
        "units": info.resolve_units(analysis.context.descriptors, analysis.fields),
        "mode": mode,
        "status": "running",
        "started": time.time(),
    }


def closing_metadata(run: RunState, analysis: Analysis, ended: str) -> dict[str, Any]:
    """The analysis node's metadata when it ends (``ended``: its status): the counts."""
    return {
        "status": ended,
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


def run_summary(run: RunState, exit_status: str, raw_failures: int) -> dict[str, Any]:
    """A finished run's summary: per plugin, events analysed, errors, drops."""
    return {
        "run_uid": run.uid,
        "exit_status": exit_status,
        "dropped": run.dropped,
        "rejected_documents": run.problems,
        "lost_events": run.lost_events,
        "raw_failures": raw_failures,
        "plugins": {
            a.plugin: {
                "key": a.key,
                "status": status(run, a),
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


def log_run_summary(summary: Mapping[str, Any]) -> None:
    """One log line per finished run; a warning if documents were dropped or rejected."""
    parts = [
        f"{name}: {p['events']} events, {p['errors']} errors"
        + (" (disabled)" if p["disabled"] else "")
        for name, p in summary["plugins"].items()
    ]
    level = logging.WARNING if summary["dropped"] or summary["rejected_documents"] else logging.INFO
    logger.log(
        level,
        "run %s finished (%s): %s; %d documents dropped, %d rejected",
        short_uid(summary["run_uid"]),
        summary["exit_status"],
        "; ".join(parts) or "no plugins",
        summary["dropped"],
        summary["rejected_documents"],
    )


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


def traceback_summary(exc: BaseException, limit: int = 3) -> str:
    """The last ``limit`` frames of an exception's traceback, for an error record."""
    return format_frames(traceback.extract_tb(exc.__traceback__)[-limit:])
