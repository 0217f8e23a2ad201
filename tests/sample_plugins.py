"""Small plugins the tests register, as a third-party package would write them."""

from __future__ import annotations

import threading
import time

import numpy as np

from smartlab_plugins import DataSpec, EventBatch, PluginInfo, Results, RunContext, hookimpl


class TotalIntensity:
    """Sums every 1-D field per event; a well-behaved plugin."""

    name = "total_intensity"

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        return Results(scalars={f"{k}_total": v.sum(axis=1) for k, v in batch.data.items()})


class FailsOnOddEvents:
    """Raises on odd seq_num: its errors must be recorded against those events."""

    name = "fails_on_odd"

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        odd = batch.seq_num[batch.seq_num % 2 == 1]
        if len(odd):
            raise ValueError(f"cannot analyse odd event {odd[0]}")
        return Results(scalars={"ok": np.ones(len(batch))})


class AlwaysFails:
    """Raises on every batch: it must be disabled for the run, never abort it."""

    name = "always_fails"

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(0, 1)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        raise RuntimeError("broken on purpose")


class Slow:
    """Takes ``delay`` seconds per batch: the scan must not wait for it."""

    name = "slow"

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(0,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        time.sleep(self.delay)
        return Results(scalars={"n": np.full(len(batch), len(batch))})


class WrongLength:
    """Returns one result too few: the worker must refuse it with a clear error."""

    name = "wrong_length"

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        return Results(scalars={"short": np.zeros(len(batch) - 1)})


class RunCounter:
    """Counts events per run in run.state: state must not leak between runs."""

    name = "run_counter"

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(0,)))

    @hookimpl
    def smartlab_start_run(self, run: RunContext) -> None:
        run.state["events"] = 0

    @hookimpl
    def smartlab_analyze(self, run: RunContext, batch: EventBatch) -> None:
        run.state["events"] += len(batch)

    @hookimpl
    def smartlab_finish_run(self, run: RunContext) -> dict:
        return {"events": run.state["events"]}


class Hangs:
    """Never returns from event ``at`` on (until ``release`` is set): a deadlocked plugin."""

    name = "hangs"

    def __init__(self, at: int = 5) -> None:
        self.at = at
        self.release = threading.Event()

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        if batch.seq_num[-1] >= self.at:
            self.release.wait()
        return Results(scalars={"ok": np.ones(len(batch))})


class Crawls:
    """Takes ``per_event`` seconds per event: far slower than a fast scan makes them."""

    name = "crawls"

    def __init__(self, per_event: float = 0.2) -> None:
        self.per_event = per_event

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        time.sleep(self.per_event * len(batch))
        return Results(scalars={"ok": np.ones(len(batch))})


class Leaks:
    """Keeps ``mb_per_event`` MB of memory for every event it sees, and never lets go."""

    name = "leaks"

    def __init__(self, mb_per_event: float = 16) -> None:
        self.mb_per_event = mb_per_event
        self.kept: list[np.ndarray] = []

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        return PluginInfo(self.name, "0.1", DataSpec(ndims=(1,)))

    @hookimpl
    def smartlab_analyze(self, batch: EventBatch) -> Results:
        for _ in range(len(batch)):
            self.kept.append(np.ones(int(self.mb_per_event * 2**20 / 8)))  # touched: resident
        return Results(scalars={"ok": np.ones(len(batch))})
