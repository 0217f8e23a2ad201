"""The rules that keep one plugin from holding up the others: lanes, timeouts, memory.

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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from smartlab_plugins.hookspecs import EventBatch
from smartlab_plugins.lanes import Lane
from smartlab_plugins.protocol import Limits
from smartlab_plugins.run_index import short_uid
from smartlab_plugins.worker.records import Analysis, Recorder, RunState

if TYPE_CHECKING:
    from distributed import Future

logger = logging.getLogger(__name__)


class Supervisor:
    """Lanes of the analyses, and what happens to a plugin too slow, hung or leaking."""

    def __init__(self, recorder: Recorder, limits: Limits = Limits()) -> None:  # noqa: B008 (frozen)
        self.recorder = recorder
        self.plugin_timeout = limits.plugin_timeout
        self.lane_capacity = limits.lane_capacity
        self.max_growth_mb = limits.max_growth_mb
        self.backpressure = limits.backpressure

    def open_lane(self, analysis: Analysis, start: Callable[[], None]) -> None:
        """Give the analysis its lane, with ``start`` (the plugin's set-up) first on it."""
        # room for the start call beside lane_capacity batches: it is queued first, and
        # counted against the batches it would make a fast plugin skip its first under drop
        analysis.lane = Lane(analysis.plugin, capacity=self.lane_capacity + 1)
        analysis.lane.submit(start, "start_run")

    def submit(
        self,
        run: RunState,
        analysis: Analysis,
        batch: EventBatch,
        work: Callable[[], None],
        pending: Future | None = None,
    ) -> None:
        """Queue ``work`` on a batch on the plugin's lane; if the lane stays full, time the
        plugin out (``spill``) or record the batch as skipped (``drop``).

        ``pending``, the batch's computation already started elsewhere, is cancelled
        if the batch does not go on the lane.
        """
        first, last = int(batch.seq_num[0]), int(batch.seq_num[-1])
        what = f"events {first}-{last} of stream {batch.stream!r}"
        wait = self.plugin_timeout if self.backpressure == "spill" else 0.0
        if analysis.lane.submit(work, what, batch.stream, first, wait=wait):
            return
        if pending is not None:
            pending.cancel()
        if wait:
            self.timed_out(run, analysis, f"its lane stayed full for {wait:g} s, at {what}")
            return
        analysis.skipped += len(batch)
        self.recorder.record(
            run,
            analysis,
            "skipped",
            f"not analysed: the plugin is behind ({self.lane_capacity} batches already "
            f"waiting), {what} skipped",
            stream=batch.stream,
            seq_num=first,
            error="PluginBehind",
        )

    def check_memory(self, run: RunState, analysis: Analysis, batch: EventBatch) -> None:
        """Disable the plugin for the run if its calls grew memory past ``max_growth_mb``."""
        growth_mb = analysis.lane.growth / 2**20
        if growth_mb <= self.max_growth_mb or analysis.disabled:
            return
        analysis.disabled = True
        message = (
            f"disabled for this run: memory grew by {growth_mb:.0f} MB over "
            f"{analysis.lane.measured_calls} of its calls that ran alone "
            f"(limit max_growth_mb={self.max_growth_mb:g})"
        )
        logger.error("run %s plugin %s: %s", short_uid(run.uid), analysis.plugin, message)
        self.recorder.record(
            run,
            analysis,
            "memory",
            message,
            stream=batch.stream,
            seq_num=int(batch.seq_num[-1]),
            error="PluginMemoryGrowth",
        )

    def watch(self, run: RunState) -> None:
        """Disable, for this run, each plugin whose call has taken longer than the timeout."""
        for analysis in run.active:
            lane = analysis.lane
            if lane is not None and not lane.abandoned and lane.busy_for > self.plugin_timeout:
                self.timed_out(run, analysis)

    def timed_out(self, run: RunState, analysis: Analysis, what: str | None = None) -> None:
        """Disable the plugin for the run, record where it was stuck, abandon its lane."""
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
        self.recorder.record(
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

    def finish(self, run: RunState, finisher: Callable[[Analysis], Callable[[], None]]) -> None:
        """Let each plugin finish the run on its lane (``finisher(analysis)`` is the call).

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
                if id(analysis) in to_submit and lane.submit(finisher(analysis), "finish_run"):
                    to_submit.discard(id(analysis))
                if id(analysis) not in to_submit and lane.wait_idle(0):
                    lane.stop()
                elif time.monotonic() > deadline or lane.busy_for > self.plugin_timeout:
                    self.timed_out(run, analysis)
                else:
                    still.append(analysis)
            unfinished = still
            if unfinished:
                time.sleep(0.005)

    @staticmethod
    def wait_idle(runs: Iterable[RunState], timeout: float | None) -> bool:
        """Wait until the runs' lanes have done all given so far; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for run in list(runs):
            for analysis in run.active:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if analysis.lane is not None and not analysis.lane.wait_idle(left):
                    return False
        return True
