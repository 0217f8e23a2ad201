"""How fast a model plugin runs, measured against a bare forward pass of its own network.

The plugin's path is its ``smartlab_analyze`` hook on an :class:`EventBatch`
(input checks, preprocessing, forward pass, turning outputs into results);
the reference is the network's own forward pass of the same batch, already
preprocessed (:meth:`LoadedModel.run`: through the inference runtime to the
model's device and back, exactly as the plugin's own forward pass goes).
Their time ratio says what the plugin adds to the network's own cost;
``make bench`` reports it per batch size for every shipped model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from smartlab_plugins.hookspecs import EventBatch, RunContext


@dataclass
class ThroughputCase:
    """One model plugin, example inputs for it, and its preprocessing (for the bare pass)."""

    plugin: ModuleType  # with NAME, FIELD and the smartlab_start_run / smartlab_analyze hooks
    inputs: np.ndarray  # (n, ...) values of the plugin's field, n >= the largest batch
    preprocess: Callable[[np.ndarray], np.ndarray]


def measure_throughput(
    case: ThroughputCase, batch_sizes: tuple[int, ...], repeats: int = 3
) -> list[dict[str, float]]:
    """Per batch size: frames per second of the plugin's path and of the bare forward pass.

    After one untimed call of each, the two paths are timed alternately
    ``repeats`` times on the same inputs; frames per second come from each
    path's best time, the ratio (bare time / plugin time) is the median of the
    ``repeats`` side-by-side ratios, which a busy machine disturbs least.
    """
    if len(case.inputs) < max(batch_sizes):
        raise ValueError(
            f"{case.plugin.NAME}: {len(case.inputs)} example inputs, the largest batch is "
            f"{max(batch_sizes)}"
        )
    run = RunContext(uid="throughput", start={}, state={}, options={})
    case.plugin.smartlab_start_run(run=run)
    model = run.state["model"]
    rows = []
    for size in batch_sizes:
        values = case.inputs[:size]
        batch = EventBatch(
            "primary", np.arange(1, size + 1), np.zeros(size), {case.plugin.FIELD: values}
        )
        x = torch.as_tensor(case.preprocess(values))
        plugin_times, bare_times = alternate_times(
            lambda b=batch: case.plugin.smartlab_analyze(run=run, batch=b),
            lambda x=x: model.run(x),
            repeats,
        )
        ratios = [bare / plugin for plugin, bare in zip(plugin_times, bare_times, strict=True)]
        rows.append(
            {
                "batch": size,
                "plugin_frames_per_s": size / min(plugin_times),
                "bare_frames_per_s": size / min(bare_times),
                "ratio": statistics.median(ratios),
            }
        )
    return rows


def alternate_times(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall times of ``repeats`` calls of each, alternating, after one untimed call of each."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for work, record in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            work()
            record.append(time.perf_counter() - started)
    return times
