"""Where SmartLab's results live in Tiled: keys, specs and the error record."""

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
