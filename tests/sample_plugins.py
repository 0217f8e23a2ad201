"""Small plugins the tests register, as a third-party package would write them."""

from __future__ import annotations

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
