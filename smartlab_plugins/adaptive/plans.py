"""In-loop adaptive plans: measure, let planners read the live results, measure where they say.

Three Bluesky plans share one loop (:func:`adaptive_plan`):

:func:`adaptive_ramp`
    A temperature ramp that densifies at the transition (``transition_bracket``).
    The sample is hysteretic (:mod:`smartlab_plugins.devices.operando`): once a
    heating ramp has passed ``T_up`` the sample stays cubic until cooled below
    ``T_down``. So every point is approached in the ramp's direction: before a
    point behind the furthest one measured since the last reset, the plan first
    moves (without measuring) to ``reset`` (default: the ramp's start, which must
    lie beyond the far side of the loop), recorded as a ``reset`` decision.
:func:`adaptive_map`
    A line across a composition map, sampled where ``phase_cnn``'s class is
    least certain (``phase_boundary``).
:func:`count_until_precise`
    Counts again until ``spinwave_cnn``'s combined uncertainties are below
    ``target`` (``precision_target``).

Between points, a planning thread (never the RunEngine's) waits for the last
point's results, at most ``wait`` s, gives the planners what has arrived
(``smartlab_ingest``), asks whether to stop (``smartlab_should_stop``) and
where to go (``smartlab_suggest``), and lets the :class:`Arbiter` pick. The plan
meanwhile sleeps in short ``bps.sleep`` steps, so the RunEngine stays responsive
to pause and abort; if no decision comes in time it falls back.

**The default sequence** (fallback) is each plan's plain scan: uniform steps of
``step`` from the start of the ramp, a uniform grid over the map line taken coarse
to fine (ends, middle, quarters, ...), and "count again". It is used when no
planner answers in time, all planners raised, or every suggestion was rejected;
the plan then goes on to its budget.

**Every outcome ends the run with a stop document**: ``success`` with the reason
(``converged: ...`` from the planner that stopped it, ``budget exhausted``, or
``default sequence exhausted``), ``abort`` when the user aborts, ``fail`` when a
device fails. Every decision is an event of the run's ``smartlab_decisions``
stream (columns ``decision_step``, ``_action``, ``_source``, ``_planner``,
``_reason``, ``_point``, ``_detail``, ``_after_seq_num``; point and detail as
JSON text): what was suggested, by which planner, from which observations (run
uid and seq_nums), why, what the arbiter chose among, fallbacks, rejections,
planner failures, resets; the last row (``finish``) holds the summary, which the
stop document's ``reason`` repeats in one line.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import contingency_wrapper
from bluesky.utils import RunEngineControlException
from ophyd import Component as Cpt
from ophyd import Device, Signal

from smartlab_plugins.adaptive.arbiter import Arbiter, Choice
from smartlab_plugins.adaptive.feed import ResultsFeed
from smartlab_plugins.adaptive.manager import PlannerFailure, PlannerManager
from smartlab_plugins.adaptive.protocol import PlanContext, StopRequest

logger = logging.getLogger(__name__)

DECISIONS_STREAM = "smartlab_decisions"
POLL = 0.01  # s between the plan's looks at the planning thread


class DecisionLog(Device):
    """The signals one decision is read from into the ``smartlab_decisions`` stream."""

    step = Cpt(Signal, value=0)
    action = Cpt(Signal, value="")
    source = Cpt(Signal, value="")
    planner = Cpt(Signal, value="")
    reason = Cpt(Signal, value="")
    point = Cpt(Signal, value="{}")
    detail = Cpt(Signal, value="{}")
    after_seq_num = Cpt(Signal, value=0)


@dataclass
class Decision:
    """What the planning thread answered to one request."""

    request: int
    stops: list[StopRequest]
    choice: Choice | None
    failures: list[PlannerFailure]
    ingested: dict[str, list[int]]
    results_complete: bool
    seconds: float


class PlanningThread:
    """Consults the planners off the RunEngine's thread, one request at a time."""

    def __init__(
        self,
        manager: PlannerManager,
        names: Sequence[str],
        contexts: Mapping[str, PlanContext],
        arbiter: Arbiter,
        feed: ResultsFeed,
        run_uid: str,
        plugins: Sequence[str],
        wait: float,
    ) -> None:
        self.manager, self.names, self.contexts = manager, list(names), contexts
        self.arbiter, self.feed, self.run_uid = arbiter, feed, run_uid
        self.plugins, self.wait = list(plugins), wait
        self._cursor = 0
        self._cond = threading.Condition()
        self._request: tuple[int, int, int] | None = None
        self._answers: dict[int, Decision] = {}
        self._count = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="smartlab-planning", daemon=True)
        self._thread.start()

    def request(self, seq_num: int, measured: int) -> int:
        """Ask for a decision once results up to ``seq_num`` are in; returns the request id."""
        with self._cond:
            self._count += 1
            self._request = (self._count, seq_num, measured)
            self._cond.notify_all()
            return self._count

    def answer(self, request: int) -> Decision | None:
        """The decision for ``request`` if it is ready; never blocks."""
        with self._cond:
            return self._answers.pop(request, None)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)  # a planner still thinking finishes on its own

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                request, seq_num, measured = self._request
                self._request = None
            decision = self._decide(request, seq_num, measured)
            with self._cond:
                self._answers = {request: decision}

    def _decide(self, request: int, seq_num: int, measured: int) -> Decision:
        started = time.monotonic()
        complete = self.feed.wait_for(self.run_uid, seq_num, self.plugins, self.wait)
        new = self.feed.since(self.run_uid, self._cursor)
        self._cursor += len(new)
        axes = set(next(iter(self.contexts.values())).axes) if self.contexts else set()
        new = [_restricted(o, axes) for o in new]
        ingested: dict[str, list[int]] = {}
        for observation in new:
            ingested.setdefault(observation.plugin, []).append(observation.seq_num)
        for context in self.contexts.values():
            context.measured = measured
        failures = self.manager.ingest(self.names, self.contexts, new)
        stops, more = self.manager.should_stop(self.names, self.contexts)
        failures += more
        choice = None
        if not stops:
            suggestions, more = self.manager.suggest(self.names, self.contexts, 1)
            failures += more
            choice = self.arbiter.choose(suggestions, next(iter(self.contexts.values())).axes)
        return Decision(
            request, stops, choice, failures, ingested, complete, time.monotonic() - started
        )


def _restricted(observation: Any, axes: set[str]) -> Any:
    """The observation with only the plan's axes in its position (all if the plan has none)."""
    if not axes:
        return observation
    return replace(
        observation, position={k: v for k, v in observation.position.items() if k in axes}
    )


@dataclass
class Outcome:
    """How the plan ended, for the last decision and the stop document."""

    outcome: str = "running"
    why: str = ""
    planner: str = ""
    points: int = 0
    fallbacks: int = 0
    rejected: int = 0
    failures: int = 0
    resets: int = 0
    summaries: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        said = self.why if self.why.startswith(self.outcome) else f"{self.outcome}: {self.why}"
        return f"{said} ({self.points} points, {self.fallbacks} fallbacks)"

    def record(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "why": self.why,
            "planner": self.planner,
            "points": self.points,
            "fallbacks": self.fallbacks,
            "rejected": self.rejected,
            "planner_failures": self.failures,
            "resets": self.resets,
            "planners": self.summaries,
        }


def adaptive_plan(
    detectors: Sequence[Any],
    motors: Mapping[str, Any],
    limits: Mapping[str, tuple[float, float]],
    *,
    feed: ResultsFeed,
    planners: Sequence[str],
    first: Mapping[str, float],
    fallback: Callable[[list[dict[str, float]]], dict[str, float] | None],
    budget: int,
    manager: PlannerManager | None = None,
    arbiter: Arbiter | None = None,
    options: Mapping[str, Any] | None = None,
    wait: float = 5.0,
    move: Callable[..., Iterator] | None = None,
    plan_name: str = "adaptive_plan",
    md: Mapping[str, Any] | None = None,
) -> Iterator:
    """The loop all adaptive plans share (see the module's text); returns the run's uid.

    ``motors`` and ``limits`` are keyed by axis name (the motor's read key);
    ``first`` is the first point; ``fallback(measured_points)`` is the default
    sequence's next point (None when it is exhausted); ``move(point, outcome, log,
    measured, record)``, if given, replaces the plain ``bps.mv`` to a point
    (adaptive_ramp's reset lives there; ``record`` writes a decision).
    ``wait`` bounds, in seconds, how long the plan waits per point for a decision.
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1 point, got {budget}")
    if not wait > 0:
        raise ValueError(f"wait must be > 0 s, got {wait}")
    manager = manager or PlannerManager()
    names = manager.resolve(planners)
    arbiter = arbiter or Arbiter(order=names)
    plugins = sorted({p for name in names for p in manager.info(name).reads})
    for plugin in plugins:
        feed.watch(plugin)
    options = dict(options or {})
    log = DecisionLog(name="decision")
    outcome = Outcome()
    measured: list[dict[str, float]] = []
    readable = [*detectors, *motors.values()]
    run_md = {
        "plan_name": plan_name,
        "motors": list(motors),
        "detectors": [d.name for d in detectors],
        "num_points": budget,
        "smartlab_adaptive": {
            "planners": names,
            "arbiter": arbiter.policy,
            "out_of_limits": arbiter.out_of_limits,
            "budget": budget,
            "wait_s": wait,
            "limits": {k: list(v) for k, v in limits.items()},
            "options": _json_clean(options),
            "decisions_stream": DECISIONS_STREAM,
        },
        **(md or {}),
    }
    step = 0

    def record(action: str, source: str = "", planner: str = "", reason: str = "", **detail):
        nonlocal step
        step += 1
        point = detail.pop("point", None)
        for signal, value in (
            (log.step, step),
            (log.action, action),
            (log.source, source),
            (log.planner, planner),
            (log.reason, reason),
            (log.point, json.dumps(_json_clean(point or {}))),
            (log.detail, json.dumps(_json_clean(detail))),
            (log.after_seq_num, len(measured)),
        ):
            signal.put(value)
        logger.info("adaptive step %d: %s %s %s %s", step, action, planner, point or "", reason)
        yield from bps.create(DECISIONS_STREAM)
        yield from bps.read(log)
        yield from bps.save()

    def go_and_measure(point: dict[str, float]) -> Iterator:
        yield from bps.checkpoint()
        if move is not None:
            yield from move(point, outcome, log, len(measured), record)
        elif point:
            yield from bps.mv(*[x for axis, value in point.items() for x in (motors[axis], value)])
        yield from bps.trigger_and_read(readable)
        measured.append(dict(point))
        outcome.points = len(measured)

    def consult(thread: PlanningThread) -> Iterator:
        request = thread.request(len(measured), len(measured))
        deadline = time.monotonic() + wait + 1.0
        while time.monotonic() < deadline:
            decision = thread.answer(request)
            if decision is not None:
                return decision
            yield from bps.sleep(POLL)
        return None

    def loop(uid: str) -> Iterator:
        contexts = {
            name: PlanContext(uid=uid, axes=dict(limits), budget=budget, options=options)
            for name in names
        }
        thread = PlanningThread(manager, names, contexts, arbiter, feed, uid, plugins, wait)
        try:
            yield from record(
                "measure", "default", reason="first point of the default sequence", point=first
            )
            yield from go_and_measure(dict(first))
            while True:
                decision = yield from consult(thread)
                done = yield from decide(decision, contexts)
                if done:
                    break
        finally:
            thread.close()
            outcome.summaries = {
                name: _json_clean(c.state.get("summary")) for name, c in contexts.items()
            }

    def decide(decision: Decision | None, contexts: Mapping[str, PlanContext]) -> Iterator:
        """Act on one decision; True when the plan is over."""
        observed = {
            "run_uid": contexts[names[0]].uid if names else "",
            "ingested": decision.ingested if decision else {},
            "results_complete": decision.results_complete if decision else False,
        }
        if decision is not None:
            outcome.failures += len(decision.failures)
            for failure in decision.failures:
                yield from record(
                    "planner_failed",
                    planner=failure.planner,
                    reason=failure.describe(),
                    hook=failure.hook,
                    traceback=failure.traceback,
                    **observed,
                )
            for stop in decision.stops:
                if stop.action == "pause":
                    yield from record("pause", "planner", stop.planner, stop.reason, **observed)
                    yield from bps.checkpoint()
                    yield from bps.pause()
                    continue
                outcome.outcome, outcome.why, outcome.planner = (
                    "converged",
                    stop.reason,
                    stop.planner,
                )
                yield from record("stop", "planner", stop.planner, stop.reason, **observed)
                return True
        if len(measured) >= budget:
            outcome.outcome, outcome.why = "budget exhausted", f"all {budget} points measured"
            yield from record("stop", "budget", reason=outcome.why, **observed)
            return True
        choice = decision.choice if decision else None
        if choice is not None:
            outcome.rejected += len(choice.rejected)
            detail = {**observed, "arbiter": choice.record()}
            if choice.point is not None:
                yield from record(
                    "measure",
                    "planner",
                    choice.suggestion.planner,
                    choice.suggestion.reason,
                    point=choice.point,
                    **detail,
                )
                yield from go_and_measure(choice.point)
                return False
            why = f"fallback: {choice.reason}"
        elif decision is None:
            why = f"fallback: no decision within {wait:g} s"
            detail = observed
        else:
            why = "fallback: every planner failed"
            detail = observed
        point = fallback(measured)
        if point is None:
            outcome.outcome, outcome.why = "default sequence exhausted", why
            yield from record("stop", "default", reason=f"{why}; default sequence exhausted")
            return True
        outcome.fallbacks += 1
        yield from record("measure", "default", reason=why, point=point, **detail)
        yield from go_and_measure(point)
        return False

    def finish() -> Iterator:
        summary = outcome.record()
        yield from record("finish", "plan", outcome.planner, outcome.line(), summary=summary)

    def on_error(error: BaseException) -> Iterator:
        if isinstance(error, RunEngineControlException):
            exit_status = error.exit_status
            outcome.outcome, outcome.why = exit_status, f"{type(error).__name__} by the user"
        else:
            exit_status = "fail"
            outcome.outcome, outcome.why = "fail", f"{type(error).__name__}: {error}"
        try:
            yield from finish()
        except Exception as exc:  # e.g. the error struck with an event bundle open
            logger.warning("could not record the adaptive plan's end: %s", exc)
        yield from bps.close_run(exit_status=exit_status, reason=outcome.line())

    def on_success() -> Iterator:
        yield from finish()
        yield from bps.close_run(exit_status="success", reason=outcome.line())

    uid = yield from bps.open_run(run_md)
    yield from contingency_wrapper(loop(uid), except_plan=on_error, else_plan=on_success)
    return uid


def adaptive_ramp(
    detectors: Sequence[Any],
    controller: Any,
    start: float,
    stop: float,
    *,
    feed: ResultsFeed,
    step: float = 1.0,
    resolution: float = 1.0,
    coarse_step: float = 8.0,
    budget: int = 40,
    reset: float | None = None,
    planners: Sequence[str] = ("transition_bracket",),
    manager: PlannerManager | None = None,
    arbiter: Arbiter | None = None,
    options: Mapping[str, Any] | None = None,
    wait: float = 5.0,
    md: Mapping[str, Any] | None = None,
) -> Iterator:
    """A temperature ramp from ``start`` to ``stop`` (K) that densifies at the transition.

    ``detectors`` record the sample (e.g. the operando detector) at each
    temperature ``controller`` settles at. The planners (default
    ``transition_bracket``) step by ``coarse_step`` until the transition shows,
    then bisect it to ``resolution`` (K). The default sequence is a uniform ramp
    in steps of ``step`` K. Points behind the furthest one measured since the last
    reset are reached through ``reset`` (default ``start``: for a heating ramp it
    must lie below ``T_down``, for a cooling one above ``T_up``). At most ``budget``
    points are measured. Returns the run's uid.
    """
    for value in (start, stop):
        controller.check_value(value)
    if start == stop:
        raise ValueError(f"start and stop must differ, both are {start} K")
    if not step > 0:
        raise ValueError(f"step must be > 0 K, got {step}")
    sign = 1.0 if stop > start else -1.0
    reset = start if reset is None else reset
    controller.check_value(reset)
    axis = controller.name
    grid = [start + sign * step * i for i in range(int(abs(stop - start) / step + 1e-9) + 1)]
    since_reset: dict[str, float | None] = {"furthest": None}

    def fallback(measured: list[dict[str, float]]) -> dict[str, float] | None:
        furthest = since_reset["furthest"]
        ahead = [t for t in grid if furthest is None or sign * (t - furthest) > 1e-9]
        return {axis: ahead[0]} if ahead else None

    def move(point, outcome, log, after, record) -> Iterator:
        target = point[axis]
        furthest = since_reset["furthest"]
        if furthest is not None and sign * (target - furthest) < 0:
            outcome.resets += 1
            yield from record(
                "reset",
                "plan",
                reason=(
                    f"{target:.2f} K lies behind {furthest:.2f} K, measured since the last reset: "
                    f"through {reset:.2f} K first, so the sample is back on the "
                    f"{'heating' if sign > 0 else 'cooling'} branch of its hysteresis loop"
                ),
                point={axis: reset},
            )
            yield from bps.mv(controller, reset)
            since_reset["furthest"] = None
        yield from bps.mv(controller, target)
        furthest = since_reset["furthest"]
        since_reset["furthest"] = (
            target
            if furthest is None
            else (max(furthest, target) if sign > 0 else min(furthest, target))
        )

    plan_options = {
        "axis": axis,
        "direction": "heating" if sign > 0 else "cooling",
        "resolution": resolution,
        "coarse_step": coarse_step,
        "start": start,
        "stop": stop,
        **(options or {}),
    }
    return (
        yield from adaptive_plan(
            detectors,
            {axis: controller},
            {axis: (min(start, stop), max(start, stop))},
            feed=feed,
            planners=planners,
            first={axis: start},
            fallback=fallback,
            budget=budget,
            manager=manager,
            arbiter=arbiter,
            options=plan_options,
            wait=wait,
            move=move,
            plan_name="adaptive_ramp",
            md={"ramp": {"start": start, "stop": stop, "step": step, "reset": reset}, **(md or {})},
        )
    )


def coarse_to_fine(low: float, high: float, points: int) -> list[float]:
    """A uniform grid of ``points`` over [low, high], ordered coarse to fine.

    Ends first, then the middle, then the quarter points, and so on (by the
    bit-reversed index), so any prefix of it covers the range evenly.
    """
    if points < 2:
        return [low]
    grid = [low + (high - low) * i / (points - 1) for i in range(points)]
    order, seen = [0, points - 1], {0, points - 1}
    parts = 2
    while len(order) < points:
        for k in range(1, parts, 2):
            index = round(k * (points - 1) / parts)
            if index not in seen:
                seen.add(index)
                order.append(index)
        parts *= 2
    return [grid[i] for i in order]


def adaptive_map(
    detectors: Sequence[Any],
    motor: Any,
    low: float,
    high: float,
    *,
    feed: ResultsFeed,
    resolution: float = 0.005,
    initial: int = 5,
    budget: int = 30,
    grid: int | None = None,
    planners: Sequence[str] = ("phase_boundary",),
    manager: PlannerManager | None = None,
    arbiter: Arbiter | None = None,
    options: Mapping[str, Any] | None = None,
    wait: float = 5.0,
    md: Mapping[str, Any] | None = None,
) -> Iterator:
    """A line of a composition map from ``low`` to ``high``, sampled where the phase is uncertain.

    The planners (default ``phase_boundary``) start with an ``initial`` coarse
    grid, then sample where ``phase_cnn``'s class changes or is uncertain until
    every change is located to within ``resolution``. The default sequence is a
    uniform grid of ``grid`` points (default ``budget``), coarse to fine.
    """
    for value in (low, high):
        motor.check_value(value)
    axis = motor.name
    sequence = coarse_to_fine(low, high, grid or budget)

    def fallback(measured: list[dict[str, float]]) -> dict[str, float] | None:
        done = [p[axis] for p in measured]
        for x in sequence:
            if all(abs(x - d) > 1e-12 for d in done):
                return {axis: x}
        return None

    return (
        yield from adaptive_plan(
            detectors,
            {axis: motor},
            {axis: (low, high)},
            feed=feed,
            planners=planners,
            first={axis: low},
            fallback=fallback,
            budget=budget,
            manager=manager,
            arbiter=arbiter,
            options={"axis": axis, "resolution": resolution, "initial": initial, **(options or {})},
            wait=wait,
            plan_name="adaptive_map",
            md=md,
        )
    )


def count_until_precise(
    detectors: Sequence[Any],
    *,
    feed: ResultsFeed,
    target: Mapping[str, float],
    budget: int = 20,
    planners: Sequence[str] = ("precision_target",),
    manager: PlannerManager | None = None,
    arbiter: Arbiter | None = None,
    options: Mapping[str, Any] | None = None,
    wait: float = 5.0,
    md: Mapping[str, Any] | None = None,
) -> Iterator:
    """Count again until every uncertainty in ``target`` (e.g. ``{"j1": 0.005}`` meV) is met.

    The default sequence is "count again", up to ``budget`` counts.
    """
    bad = {k: v for k, v in target.items() if not (isinstance(v, (int, float)) and v > 0)}
    if not target or bad:
        raise ValueError(f"target must map result names to positive uncertainties, got {target}")
    return (
        yield from adaptive_plan(
            detectors,
            {},
            {},
            feed=feed,
            planners=planners,
            first={},
            fallback=lambda measured: {},
            budget=budget,
            manager=manager,
            arbiter=arbiter,
            options={"target": dict(target), **(options or {})},
            wait=wait,
            plan_name="count_until_precise",
            md=md,
        )
    )


def _json_clean(value: Any) -> Any:
    """``value`` with tuples as lists, non-finite floats as their names, the rest as repr."""
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return number if math.isfinite(number) else str(number)
