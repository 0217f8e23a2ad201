"""Out-of-loop planning: an agent that reads results from Tiled and feeds the queueserver.

The agent drives an experiment from outside the RunEngine, as facilities run
autonomous experiments: after each run finishes it reads that run's results
from Tiled, hands them to a planner (the hooks of
:mod:`smartlab_plugins.adaptive.protocol`), and submits the plan the planner
chose to bluesky-queueserver's RE Manager, starting the queue if needed::

    agent = QueueAgent(planner, target, experiment="mpb-boundary", zmq_control_addr=address)
    report = agent.run(rounds=3)

One decision per round. Each decision has a uid derived from the experiment
and the round, travels in the submitted plan's ``md`` (``smartlab_decision``:
what was suggested, from which results, why, what was clamped or rejected) and
so lands in that run's start document in Tiled. Before submitting, the agent
looks for that uid in the queue and the history: a restarted agent, or a retry
after a reply was lost, never submits a decision twice. A queueserver or Tiled
that does not answer is retried with backoff, and logged.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from smartlab_plugins import settings
from smartlab_plugins.adaptive.manager import PlannerManager
from smartlab_plugins.adaptive.protocol import Observation, PlanContext, StopRequest, Suggestion
from smartlab_plugins.retry import Backoff

log = logging.getLogger(__name__)

#: The key of the decision record in a submitted plan's ``md`` (and so in its start document).
DECISION_KEY = "smartlab_decision"
_DECISION_NAMESPACE = uuid.UUID("5d3c8a9e-46b1-4f55-9f7e-2a0c1b7e4d10")
_TIME_FIELDS = ("seq_num", "time")


class AgentError(RuntimeError):
    """The agent cannot go on: a service stayed unreachable, or the queueserver refused a plan."""


def decision_uid(experiment: str, round_: int) -> str:
    """The uid of an experiment's ``round_``-th decision: the same for every agent that makes it."""
    return str(uuid.uuid5(_DECISION_NAMESPACE, f"{experiment}/{round_}"))


#: Longest wait between two looks at whether a run's results are complete (Tiled pushes
#: each change; this only covers a missed push).
RESULTS_RECHECK_S = 5.0
#: The agent's default retry timing: 0.5 s doubling to 10 s, given up after 5 minutes.
DEFAULT_BACKOFF = Backoff(initial=0.5, maximum=10.0, give_up_after=300.0)


def _always(exc: BaseException) -> bool:
    return True


@dataclass(frozen=True)
class QueueTarget:
    """The plan the agent submits, and the axes a suggestion moves.

    ``axes`` maps each axis, named as its data key in the run (e.g.
    ``sample_x``), to its (low, high) limits. The plan receives one list of
    positions per axis, in the order of ``axes``, then ``kwargs`` and ``md``:
    ``measure_compositions([0.45, 0.5], md=...)`` for one axis. ``fallback`` is
    the documented default sequence: when a planner has nothing usable to
    suggest, the agent measures its next points not measured yet.
    """

    plan: str
    axes: Mapping[str, tuple[float, float]]
    fallback: Sequence[Mapping[str, float]] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def item(self, points: Sequence[Mapping[str, float]], md: Mapping[str, Any]) -> Any:
        """The queue item (a ``BPlan``) that measures ``points``."""
        from bluesky_queueserver_api import BPlan

        columns = [[float(point[axis]) for point in points] for axis in self.axes]
        return BPlan(self.plan, *columns, **self.kwargs, md=dict(md))


@dataclass
class Decision:
    """One round's choice: the points to measure, why, and from which results."""

    uid: str
    experiment: str
    round: int
    planner: str
    points: list[dict[str, float]]
    reasons: list[str]
    #: The results the planner had ingested: ``{"run_uid", "plugin", "seq_nums"}`` each.
    sources: list[dict[str, Any]]
    #: Suggestions clamped or rejected, each ``{"point", "action", "reason"}``.
    corrections: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    why: str = ""

    def metadata(self) -> dict[str, Any]:
        """The JSON-clean record that goes into the plan's ``md``."""
        return {
            "uid": self.uid,
            "experiment": self.experiment,
            "round": self.round,
            "planner": self.planner,
            "points": self.points,
            "reasons": self.reasons,
            "from_results": self.sources,
            "corrections": self.corrections,
            "fallback": self.fallback,
            "why": self.why,
            "decided_at": time.time(),
        }


@dataclass
class AgentReport:
    """What one ``run`` did: decisions submitted now, ones found already submitted, why it ended."""

    submitted: list[Decision] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    run_uids: list[str] = field(default_factory=list)
    stop: StopRequest | None = None
    ended: str = ""


class QueueAgent:
    """An out-of-loop planner on a queueserver and a Tiled server.

    Parameters
    ----------
    planner
        A module or object implementing the planner hooks (:mod:`~.protocol`).
    target
        The plan to submit and its axes' limits (:class:`QueueTarget`).
    experiment
        The experiment's name: decisions are numbered within it, and an agent
        restarted with the same name carries on where the last one stopped.
    zmq_control_addr
        The RE Manager's 0MQ control address, e.g. ``tcp://127.0.0.1:60615``.
    tiled_uri, api_key
        The Tiled server SmartLab publishes to; default ``SMARTLAB_TILED_URI``
        and ``SMARTLAB_API_KEY``.
    points_per_round
        How many points the planner is asked for each round.
    backoff
        Retry timing for an unreachable queueserver or Tiled: the project's one
        policy, :class:`~smartlab_plugins.retry.Backoff` (default: 0.5 s doubling to
        10 s, ``AgentError`` after 300 s of failures).
    results_timeout
        Seconds to wait for a finished run's results to be complete in Tiled.
    api
        A ready ``REManagerAPI`` (default: a 0MQ one of ``zmq_control_addr``).
    """

    def __init__(
        self,
        planner: Any,
        target: QueueTarget,
        *,
        experiment: str,
        zmq_control_addr: str,
        tiled_uri: str | None = None,
        api_key: str | None = None,
        points_per_round: int = 2,
        backoff: Backoff | None = None,
        results_timeout: float = 120.0,
        poll_interval: float = 0.25,
        api: Any = None,
    ) -> None:
        self.target = target
        self.experiment = experiment
        self.address = zmq_control_addr
        self.tiled_uri = tiled_uri or settings.tiled_uri()
        self.api_key = api_key or settings.api_key()
        self.points_per_round = points_per_round
        self.backoff = backoff or DEFAULT_BACKOFF
        self.results_timeout = results_timeout
        self.poll_interval = poll_interval
        self._planners = PlannerManager(load_entrypoints=False)
        self.info = self._planners.info(self._planners.register(planner))
        self.context = PlanContext(uid=experiment, axes=dict(target.axes), budget=0)
        self._api = api
        self._client: Any = None
        self._done: set[str] = set()  # decisions whose runs were read
        self._ingested: set[str] = set()  # run uids
        self._sources: dict[tuple[str, str], list[int]] = {}
        self._measured: list[dict[str, float]] = []

    # -- the loop ------------------------------------------------------------------------

    def run(self, rounds: int) -> AgentReport:
        """Drive the experiment until it has ``rounds`` decisions (or the planner stops it).

        Decisions already on the queueserver (an earlier agent's) count: they
        are waited for and their results ingested, never submitted again.
        """
        self.context.budget = rounds * self.points_per_round
        report = AgentReport()
        self._connect()
        self._ensure_environment()
        report.found = list(self._decisions_on_server())
        while True:
            decisions = self._decisions_on_server()
            pending = [uid for uid, item in decisions.items() if item is None]
            if pending:
                self._ensure_queue_running()
                decisions = self._wait_for(pending)
            report.run_uids.extend(self._ingest_finished(decisions))
            if len(decisions) >= rounds:
                report.ended = f"{len(decisions)} of {rounds} rounds done"
                break
            if stop := self._should_stop():
                report.stop = stop
                report.ended = f"the planner asked to {stop.action}: {stop.reason}"
                log.info("experiment %s: %s", self.experiment, report.ended)
                break
            decision = self.decide(len(decisions))
            if decision is None:
                report.ended = "nothing left to measure (no suggestion, fallback exhausted)"
                log.warning("experiment %s: %s", self.experiment, report.ended)
                break
            self._submit(decision)
            report.submitted.append(decision)
            self._ensure_queue_running()
        return report

    def decide(self, round_: int) -> Decision | None:
        """The decision of round ``round_``: the planner's valid suggestions, else the fallback."""
        n = self.points_per_round
        corrections: list[dict[str, Any]] = []
        try:
            suggestions = self._call("smartlab_suggest", plan=self.context, n=n) or []
        except Exception as exc:
            log.warning(
                "planner %s failed to suggest (%r); using the fallback", self.info.name, exc
            )
            suggestions, why = [], f"the planner failed: {exc!r}"
        else:
            why = "" if suggestions else "the planner suggested nothing"
        points, reasons = [], []
        for suggestion in list(suggestions)[:n]:
            point, correction = self._check(suggestion)
            if correction:
                corrections.append(correction)
                log.warning(
                    "planner %s suggested %s: %s (%s)",
                    self.info.name,
                    correction["point"],
                    correction["reason"],
                    correction["action"],
                )
            if point is not None:
                points.append(point)
                reasons.append(getattr(suggestion, "reason", "") or "(no reason given)")
        fallback = not points
        if fallback:
            why = why or "every suggestion was rejected"
            points = self._fallback_points(n)
            if not points:
                return None
            reasons = [f"fallback sequence: {why}"] * len(points)
            log.warning(
                "experiment %s round %d: %s; measuring the fallback sequence's next points %s",
                self.experiment,
                round_,
                why,
                points,
            )
        else:
            why = "; ".join(dict.fromkeys(reasons))  # each distinct reason once, in order
        sources = [
            {"run_uid": run_uid, "plugin": plugin, "seq_nums": seq_nums}
            for (run_uid, plugin), seq_nums in self._sources.items()
        ]
        return Decision(
            uid=decision_uid(self.experiment, round_),
            experiment=self.experiment,
            round=round_,
            planner=f"{self.info.name} {self.info.version}",
            points=points,
            reasons=reasons,
            sources=sources,
            corrections=corrections,
            fallback=fallback,
            why=why,
        )

    # -- suggestions ---------------------------------------------------------------------

    def _check(self, suggestion: Any) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
        """A usable point (clamped into the limits if needed) and what was corrected, if any."""
        raw = dict(getattr(suggestion, "point", None) or {})
        shown = {key: _plain(value) for key, value in raw.items()}
        if not isinstance(suggestion, Suggestion):
            return None, {"point": shown, "action": "rejected", "reason": "not a Suggestion"}
        missing = [axis for axis in self.target.axes if axis not in raw]
        if missing:
            reason = f"no value for axis {', '.join(missing)} (expected {list(self.target.axes)})"
            return None, {"point": shown, "action": "rejected", "reason": reason}
        point, notes = {}, []
        for axis, (low, high) in self.target.axes.items():
            try:
                value = float(raw[axis])
            except (TypeError, ValueError):
                reason = f"{axis} = {raw[axis]!r} is not a number"
                return None, {"point": shown, "action": "rejected", "reason": reason}
            if not math.isfinite(value):
                reason = f"{axis} = {value} is not finite"
                return None, {"point": shown, "action": "rejected", "reason": reason}
            if not low <= value <= high:
                clamped = min(max(value, low), high)
                notes.append(
                    f"{axis} = {value:g} outside [{low:g}, {high:g}], clamped to {clamped:g}"
                )
                value = clamped
            point[axis] = value
        if notes:
            return point, {"point": shown, "action": "clamped", "reason": "; ".join(notes)}
        return point, None

    def _fallback_points(self, n: int) -> list[dict[str, float]]:
        """The fallback sequence's next ``n`` points that were not measured yet."""
        out = []
        for point in self.target.fallback:
            if not any(_same(point, seen, self.target.axes) for seen in (*self._measured, *out)):
                out.append({axis: float(point[axis]) for axis in self.target.axes})
            if len(out) == n:
                break
        return out

    def _should_stop(self) -> StopRequest | None:
        try:
            return self._call("smartlab_should_stop", plan=self.context)
        except Exception as exc:
            log.warning("planner %s failed in should_stop (%r); going on", self.info.name, exc)
            return None

    def _call(self, hook: str, **kwargs: Any) -> Any:
        return self._planners.call(hook, self.info.name, **kwargs)

    # -- the queueserver -----------------------------------------------------------------

    def _connect(self) -> None:
        if self._api is None:
            from bluesky_queueserver_api.zmq import REManagerAPI

            self._api = REManagerAPI(zmq_control_addr=self.address)
        self._queueserver(lambda: self._api.status(reload=True))
        self._client = self._retry(
            "Tiled",
            self.tiled_uri,
            lambda: _connect_tiled(self.tiled_uri, self.api_key),
            _tiled_errors(),
        )

    def _queueserver(self, call: Callable[[], Any]) -> Any:
        return self._retry("queueserver", self.address, call, (self._api.RequestTimeoutError,))

    def _retry(self, what: str, address: str | None, call: Callable[[], Any], errors: tuple) -> Any:
        """``call()``, retried with backoff while ``what`` at ``address`` does not answer."""
        # a fresh run of attempts for this call; every error in ``errors`` is worth waiting for
        backoff = replace(self.backoff, transient=_always)
        while True:
            try:
                result = call()
            except errors as exc:
                waited = backoff.failing_for()
                delay = backoff.next_delay(exc)
                if delay is None:
                    raise AgentError(
                        f"{what} at {address} unreachable for {waited:.0f} s, giving up: {exc}"
                    ) from exc
                log.warning(
                    "%s at %s unreachable, retrying in %.1f s (%s)", what, address, delay, exc
                )
                time.sleep(delay)
            else:
                return result

    def _ensure_environment(self) -> None:
        status = self._queueserver(lambda: self._api.status(reload=True))
        if status.get("worker_environment_exists"):
            return
        log.info("opening the RE Worker environment at %s", self.address)
        self._queueserver(self._api.environment_open)
        self._queueserver(lambda: self._api.wait_for_idle(timeout=300))
        if not self._queueserver(lambda: self._api.status(reload=True)).get(
            "worker_environment_exists"
        ):
            raise AgentError(f"the RE Worker environment at {self.address} did not open")

    def _ensure_queue_running(self) -> None:
        status = self._queueserver(lambda: self._api.status(reload=True))
        if status.get("manager_state") == "idle" and status.get("items_in_queue", 0) > 0:
            log.info("starting the queue at %s", self.address)
            try:
                self._queueserver(self._api.queue_start)
            except self._api.RequestFailedError as exc:  # started meanwhile by someone else
                log.info("queue not started: %s", exc)

    def _decisions_on_server(self) -> dict[str, dict[str, Any] | None]:
        """This experiment's decisions on the server: uid -> history item, or None while pending."""
        queue = self._queueserver(lambda: self._api.queue_get(reload=True))
        history = self._queueserver(lambda: self._api.history_get(reload=True))
        found: dict[str, dict[str, Any] | None] = {}
        for item in history.get("items", []):
            if (record := self._record(item)) is not None:
                found[record["uid"]] = item
        pending = [*queue.get("items", []), queue.get("running_item") or {}]
        for item in pending:
            if (record := self._record(item)) is not None and record["uid"] not in found:
                found[record["uid"]] = None
        return found

    def _record(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        record = ((item.get("kwargs") or {}).get("md") or {}).get(DECISION_KEY)
        if isinstance(record, Mapping) and record.get("experiment") == self.experiment:
            return dict(record)
        return None

    def _wait_for(self, uids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Poll the history until the decisions ``uids`` have run (an idle queue is restarted)."""
        waiting = set(uids)
        while True:
            decisions = self._decisions_on_server()
            if not waiting & {uid for uid, item in decisions.items() if item is None}:
                return decisions
            self._ensure_queue_running()
            time.sleep(self.poll_interval)

    def _submit(self, decision: Decision) -> None:
        """Add the decision's plan to the queue once: look for its uid first, at every attempt."""
        md = {
            DECISION_KEY: decision.metadata(),
            "smartlab": {"plugins": list(self.info.reads)},
        }
        item = self.target.item(decision.points, md)

        def attempt() -> None:
            if decision.uid in self._decisions_on_server():
                log.info(
                    "decision %s (round %d) is already on the queueserver: not submitted again",
                    decision.uid,
                    decision.round,
                )
                return
            try:
                self._api.item_add(item)
            except self._api.RequestFailedError as exc:
                raise AgentError(
                    f"the queueserver at {self.address} refused plan {self.target.plan!r} "
                    f"for decision {decision.uid}: {exc}"
                ) from exc
            log.info(
                "experiment %s round %d: submitted %s %s (%s)",
                self.experiment,
                decision.round,
                self.target.plan,
                decision.points,
                decision.why,
            )

        self._queueserver(attempt)

    # -- results from Tiled --------------------------------------------------------------

    def _ingest_finished(self, decisions: Mapping[str, dict[str, Any] | None]) -> list[str]:
        """Read the results of runs not ingested yet, in history order; ingest them; their uids."""
        new_runs = []
        for uid, item in decisions.items():
            if item is None or uid in self._done:
                continue
            self._done.add(uid)
            result = item.get("result") or {}
            if result.get("exit_status") != "completed":
                log.warning(
                    "decision %s ended %s: %s",
                    uid,
                    result.get("exit_status"),
                    result.get("msg") or "(no message)",
                )
            for run_uid in result.get("run_uids", []):
                if run_uid in self._ingested:
                    continue
                observations = self._read_observations(run_uid)
                self._ingested.add(run_uid)
                new_runs.append(run_uid)
                for obs in observations:
                    self._sources.setdefault((obs.run_uid, obs.plugin), []).append(obs.seq_num)
                    if not any(
                        _same(obs.position, seen, self.target.axes) for seen in self._measured
                    ):
                        self._measured.append(dict(obs.position))
                self.context.measured = len(self._measured)
                if observations:
                    self._call("smartlab_ingest", plan=self.context, observations=observations)
        return new_runs

    def _read_observations(self, run_uid: str) -> list[Observation]:
        """A finished run's results as Observations, once Tiled has all of them.

        Waits, told by Tiled's streaming (no polling), until the raw run has its
        stop document and each analysis left ``running``; looks again at least
        every ``RESULTS_RECHECK_S`` in case a push was missed.
        """
        from smartlab_plugins.following import NodeChanges
        from smartlab_plugins.layout import ROOT_KEY
        from smartlab_plugins.results import find_analyses, read_events

        deadline = time.monotonic() + self.results_timeout
        roots = self._tiled(
            lambda: [self._client, *([self._client[ROOT_KEY]] if ROOT_KEY in self._client else [])]
        )
        with NodeChanges(roots) as changes:  # Tiled pushes the stop and each status update
            while True:
                run, analyses = self._tiled(lambda: self._finished(run_uid))
                if run is not None and analyses is not None:
                    break
                if time.monotonic() > deadline:
                    raise AgentError(
                        f"results of run {run_uid} not complete in Tiled at {self.tiled_uri} "
                        f"after {self.results_timeout:.0f} s (plugins {list(self.info.reads)})"
                    )
                changes.wait(timeout=RESULTS_RECHECK_S)
        # by its path: what run["primary"] is depends on bluesky-tiled-plugins' client
        # registry, which one use of databroker's .v2 in the process changes for all
        # the motors' readbacks are columns of the stream's table
        table = self._client[f"{run_uid}/primary/internal"].read(list(self.target.axes))
        positions = {axis: table[axis].to_numpy() for axis in self.target.axes}
        observations = []
        for plugin in self.info.reads:
            for analysis in find_analyses(self._client, run_uid=run_uid, plugin=plugin):
                table = read_events(analysis)
                for row in table.to_dict(orient="records"):
                    seq_num = int(row["seq_num"])
                    position = {
                        axis: float(values[seq_num - 1]) for axis, values in positions.items()
                    }
                    values = {k: _scalar(v) for k, v in row.items() if k not in _TIME_FIELDS}
                    observations.append(Observation(run_uid, seq_num, plugin, position, values))
        return observations

    def _finished(self, run_uid: str) -> tuple[Any, list[Any] | None]:
        from smartlab_plugins.results import find_analyses

        if run_uid not in self._client:
            return None, None
        run = self._client[run_uid]
        if not run.metadata.get("stop"):
            return None, None
        analyses = []
        for plugin in self.info.reads:
            found = find_analyses(self._client, run_uid=run_uid, plugin=plugin)
            if not found or any(a.metadata.get("status") == "running" for a in found):
                return run, None
            analyses.extend(found)
        return run, analyses

    def _tiled(self, call: Callable[[], Any]) -> Any:
        return self._retry("Tiled", self.tiled_uri, call, _tiled_errors())


def _connect_tiled(uri: str | None, api_key: str | None) -> Any:
    from smartlab_plugins.connection import connect

    return connect(uri, api_key)


def _tiled_errors() -> tuple[type[BaseException], ...]:
    import httpx

    from smartlab_plugins.connection import TiledUnavailableError

    return (TiledUnavailableError, httpx.TransportError)


def _same(a: Mapping[str, float], b: Mapping[str, float], axes: Iterable[str]) -> bool:
    return all(math.isclose(float(a[axis]), float(b[axis]), abs_tol=1e-9) for axis in axes)


def _scalar(value: Any) -> Any:
    """A Python scalar for a numpy one."""
    return value.item() if isinstance(value, np.generic) else value


def _plain(value: Any) -> Any:
    """A JSON-clean scalar for metadata: NaN and infinities as text."""
    value = _scalar(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)
