"""``peak_stats`` under other names: N plugins of the same cost, for the scaling benchmark.

A module of its own (not the benchmark script) so that the copies pickle by
reference and SmartLab's worker process can import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.plugins import peak_stats


class PeakStatsCopy:
    """``peak_stats``' hooks, described under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        """``peak_stats``' description, renamed."""
        return replace(peak_stats.smartlab_describe(), name=self.name)

    @hookimpl
    def smartlab_start_run(self, run: RunContext) -> None:
        """As ``peak_stats``."""
        peak_stats.smartlab_start_run(run=run)

    @hookimpl
    def smartlab_analyze(self, run: RunContext, stream: str, batch: EventBatch) -> Results | None:
        """As ``peak_stats``."""
        return peak_stats.smartlab_analyze(run=run, stream=stream, batch=batch)

    @hookimpl
    def smartlab_finish_run(self, run: RunContext, stop: Mapping[str, Any]) -> dict | None:
        """As ``peak_stats``."""
        return peak_stats.smartlab_finish_run(run=run, stop=stop)
