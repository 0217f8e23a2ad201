"""Live results as planner observations, straight from SmartLab's worker.

A :class:`ResultsFeed` rides on SmartLab's live-view mechanism
(:meth:`SmartLab.add_live_view <smartlab_plugins.callbacks.smartlab.SmartLab.add_live_view>`):
for each plugin it watches, it adds one small view, so the worker forwards that
plugin's per-event results to this process as it publishes them. Each results
message becomes one :class:`~smartlab_plugins.adaptive.protocol.Observation` per
event: ``position`` from the message's ``context`` (the stream's other scalar
fields, e.g. the motors' readbacks), ``values`` from its ``scalars``.

Messages arrive on SmartLab's listener thread, where the feed only appends
under a lock; plans and planning threads read with :meth:`ResultsFeed.since`
(never blocks) or :meth:`ResultsFeed.wait_for` (blocks at most ``timeout``, for
planning threads, never for the RunEngine's).
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from smartlab_plugins.adaptive.protocol import Observation


class _Tap:
    """The live view the feed adds for one plugin (SmartLab asks views for ``plugin``)."""

    wants_arrays = False
    wants_inputs = False

    def __init__(self, feed: ResultsFeed, plugin: str) -> None:
        self.feed = feed
        self.plugin = plugin

    def __call__(self, message: dict[str, Any]) -> None:
        if message.get("plugin") == self.plugin:
            self.feed.put(message)


class ResultsFeed:
    """Per-event results of some plugins, as observations, for adaptive plans.

    ``smartlab`` is the session's SmartLab (subscribed to the RunEngine that
    runs the plan); ``plugins`` are watched from the start, more with
    :meth:`watch`. :meth:`close` removes the feed's views.
    """

    def __init__(self, smartlab: Any, plugins: Iterable[str] = ()) -> None:
        self._smartlab = smartlab
        self._taps: dict[str, _Tap] = {}
        self._cond = threading.Condition()
        self._runs: dict[str, list[Observation]] = {}
        self._latest: dict[tuple[str, str], int] = {}
        for plugin in plugins:
            self.watch(plugin)

    def watch(self, plugin: str) -> None:
        """Have the worker forward ``plugin``'s results to this feed (idempotent)."""
        if plugin not in self._taps:
            tap = _Tap(self, plugin)
            self._smartlab.add_live_view(tap)
            self._taps[plugin] = tap

    @property
    def plugins(self) -> list[str]:
        return sorted(self._taps)

    def close(self) -> None:
        """Stop receiving results (the observations received stay readable)."""
        for tap in self._taps.values():
            self._smartlab.remove_live_view(tap)
        self._taps.clear()

    def put(self, message: dict[str, Any]) -> None:
        """Take one results message (SmartLab's listener thread); cheap, never raises."""
        try:
            observations = observations_of(message)
        except (KeyError, TypeError, ValueError, IndexError):
            return
        if not observations:
            return
        with self._cond:
            run = observations[0].run_uid
            self._runs.setdefault(run, []).extend(observations)
            key = (run, observations[0].plugin)
            self._latest[key] = max(self._latest.get(key, 0), *(o.seq_num for o in observations))
            self._cond.notify_all()

    def since(self, run_uid: str, index: int = 0) -> list[Observation]:
        """The run's observations from the ``index``-th on, in arrival order; never blocks."""
        with self._cond:
            return list(self._runs.get(run_uid, ())[index:])

    def latest(self, run_uid: str, plugin: str) -> int:
        """The highest seq_num of ``plugin``'s results for the run so far (0: none)."""
        with self._cond:
            return self._latest.get((run_uid, plugin), 0)

    def wait_for(self, run_uid: str, seq_num: int, plugins: Sequence[str], timeout: float) -> bool:
        """Block until each of ``plugins`` has results up to ``seq_num``, for at most ``timeout``.

        True if they all arrived. For planning threads: the RunEngine's thread
        must never wait here.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(self._latest.get((run_uid, p), 0) >= seq_num for p in plugins):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def observations_of(message: dict[str, Any]) -> list[Observation]:
    """One observation per event of a live results message (see the module's text).

    Positions keep the numeric, finite context fields; values keep every scalar.
    """
    seq_nums = list(message["seq_num"])
    context = message.get("context") or {}
    scalars = message.get("scalars") or {}
    observations = []
    for i, seq_num in enumerate(seq_nums):
        position = {
            name: float(values[i]) for name, values in context.items() if _finite_number(values[i])
        }
        observations.append(
            Observation(
                run_uid=str(message["run_uid"]),
                seq_num=int(seq_num),
                plugin=str(message["plugin"]),
                position=position,
                values={name: values[i] for name, values in scalars.items()},
            )
        )
    return observations


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
