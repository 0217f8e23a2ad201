"""Where SmartLab's results live in Tiled: keys, specs and the error record.

Under a top-level ``smartlab`` container, in the style of the raw runs
``TiledWriter`` writes::

    smartlab/
      <analysis uid>/        spec SmartLabAnalysis; metadata: run_uid, scan_id, plugin,
                             plugin_version, model, sha256, device, status, units, ...
        <stream>/            spec SmartLabStream
          events             appendable table: seq_num, time (the event's), the plugin's
                             scalars; one append per batch of events
          <array>/000000...  arrays, one leading entry per event, one part per batch
        errors               appendable table: plugin, stage, stream, seq_num, error,
                             message, traceback

When an analysis ends, its raw run's metadata names it
(``client[run_uid].metadata["smartlab_analyses"]``: ``{plugin: ["smartlab/<analysis
uid>"]}``), so a run's analyses are found from the run itself.

A reader reads a whole table at any time, and Tiled's streaming pushes each
append to subscribers (``node.subscribe()``; :func:`smartlab_plugins.results.follow`).
Arrays stay immutable parts: tiled 0.2 fails a reader of an array that grows
under it. Analyses published before tables were appendable have ``events`` and
``errors`` as containers of immutable parts; :mod:`smartlab_plugins.results`
reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ROOT_KEY = "smartlab"
ANALYSIS_SPEC = "SmartLabAnalysis"
STREAM_SPEC = "SmartLabStream"
EVENTS_KEY = "events"
ERRORS_KEY = "errors"
#: In a raw run's metadata: its analyses, ``{plugin: ["smartlab/<analysis uid>", ...]}``.
RUN_LINKS_KEY = "smartlab_analyses"
PART_DIGITS = 6


@dataclass(frozen=True)
class ErrorRecord:
    """One failure, as published in an analysis' ``errors`` table."""

    plugin: str
    stage: str
    stream: str
    seq_num: int
    error: str
    message: str
    traceback: str = ""


def part_key(index: int) -> str:
    return f"{index:0{PART_DIGITS}d}"


def json_clean(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
