"""A publisher that keeps in memory what the worker would write to Tiled.

It has :class:`~smartlab_plugins.publish.Publisher`'s interface, so the real
worker's rules (validation, supervision, records) are testable in
milliseconds, without a server; what reaches Tiled is tested end to end
elsewhere.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np


class MemoryPublisher:
    """The Publisher's interface, in memory: what the worker would write to Tiled."""

    def __init__(self) -> None:
        self.analyses: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, list[Any]] = {}
        self.rows: dict[str, int] = {}

    def open_analysis(self, metadata: dict[str, Any]) -> str:
        key = str(uuid.uuid4())
        self.analyses[key] = dict(metadata)
        self.errors[key] = []
        self.rows[key] = 0
        return key

    def append(self, key: str, stream: str, seq_num: np.ndarray, time: Any, results: Any) -> None:
        self.rows[key] += len(seq_num)

    def record_errors(self, key: str, records: list[Any]) -> None:
        self.errors[key].extend(records)

    def close_analysis(self, key: str, metadata: dict[str, Any]) -> None:
        self.analyses[key].update(metadata)

    def stats(self) -> dict[str, Any]:
        return {}

    def of_run(self, run_uid: str) -> list[str]:
        return [k for k, m in self.analyses.items() if m["run_uid"] == run_uid]
