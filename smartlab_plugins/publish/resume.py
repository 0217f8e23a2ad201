"""Carrying on an analysis another worker began: what Tiled has, and no repeats.

Used by broker workers that take over a dead worker's shard
(:mod:`smartlab_plugins.transport.consumer`): before a run is analysed again,
:func:`existing_results` reads what Tiled already has of its analyses, and
:class:`ResumingPublisher` carries the same analysis nodes on without writing
an event's results twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import Results
from smartlab_plugins.layout import ERRORS_KEY, EVENTS_KEY, ErrorRecord
from smartlab_plugins.publish.results_writer import Publisher
from smartlab_plugins.results import find_analyses

logger = logging.getLogger(__name__)

#: Metadata that marks analyses made by broker workers (and lets a successor find them).
TRANSPORT = "redis"


@dataclass
class Existing:
    """What Tiled already has of one analysis a dead worker began."""

    key: str
    parts: dict[tuple[str, ...], int] = field(default_factory=dict)  # array -> next part
    rows: dict[tuple[str, ...], int] = field(default_factory=dict)  # table -> rows there
    done: dict[str, set[int]] = field(default_factory=dict)  # stream -> seq_nums
    errors: set[tuple] = field(default_factory=set)  # (stage, stream, seq_num, message)


class ResumingPublisher(Publisher):
    """A results publisher that carries on, without repeats, analyses another worker began.

    Before a worker analyses a run again it calls :meth:`resume` with what Tiled
    already has of it; opening that run's analysis for the same plugin then
    reuses the node, numbers new parts after the existing ones, and drops
    results and errors of events already there. Runs not resumed are published
    exactly as by :class:`~smartlab_plugins.publish.Publisher`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resumable: dict[tuple[str, str], Existing] = {}
        self._resumed: dict[str, Existing] = {}
        self.skipped_events = 0

    def resume(self, run_uid: str, plugin: str, existing: Existing) -> None:
        self._resumable[(run_uid, plugin)] = existing

    def open_analysis(self, metadata: Mapping[str, Any]) -> str:
        existing = self._resumable.pop((metadata.get("run_uid"), metadata.get("plugin")), None)
        if existing is None:
            return super().open_analysis(metadata)
        # Decided here, on the worker's thread, before any write of this key is planned.
        self._next_index.update(existing.parts)
        self._rows.update(existing.rows)
        self._run_of[existing.key] = (metadata.get("run_uid"), metadata.get("plugin"))
        self._resumed[existing.key] = existing
        logger.info(
            "run %s plugin %s: carrying on analysis %s (%d event(s) already in Tiled)",
            str(metadata.get("run_uid"))[:8],
            metadata.get("plugin"),
            existing.key[:8],
            sum(len(s) for s in existing.done.values()),
        )
        return existing.key

    def append(
        self, key: str, stream: str, seq_num: np.ndarray, time: np.ndarray, results: Results
    ) -> None:
        existing = self._resumed.get(key)
        done = existing.done.get(stream) if existing is not None else None
        if done:
            keep = ~np.isin(seq_num, np.fromiter(done, dtype=np.int64, count=len(done)))
            self.skipped_events += int((~keep).sum())
            if not keep.any():
                return
            if not keep.all():
                seq_num, time = seq_num[keep], time[keep]
                results = Results(
                    scalars={k: np.asarray(v)[keep] for k, v in results.scalars.items()},
                    arrays={k: np.asarray(v)[keep] for k, v in results.arrays.items()},
                    dims=results.dims,
                )
        super().append(key, stream, seq_num, time, results)

    def record_errors(self, key: str, records: list[ErrorRecord]) -> None:
        existing = self._resumed.get(key)
        if existing is not None:
            records = [
                r
                for r in records
                if (r.stage, r.stream, r.seq_num, r.message) not in existing.errors
                and r.seq_num not in existing.done.get(r.stream, ())
            ]
            if not records:
                return
        super().record_errors(key, records)


def existing_results(client: Any, run_uid: str) -> dict[str, Existing]:
    """Per plugin, what Tiled has of the broker workers' live analyses of ``run_uid``."""
    found: dict[str, Existing] = {}
    for analysis in find_analyses(client, run_uid=run_uid, mode="live", transport=TRANSPORT):
        key = analysis.metadata["analysis_uid"]
        existing = Existing(key)
        for name, node in analysis.items():
            if name == ERRORS_KEY:
                table = node.read()
                existing.rows[(key, ERRORS_KEY)] = len(table)
                existing.errors |= set(
                    zip(
                        table["stage"],
                        table["stream"],
                        table["seq_num"],
                        table["message"],
                        strict=True,
                    )
                )
                continue
            done = existing.done.setdefault(name, set())
            for result, child in node.items():
                if result == EVENTS_KEY:
                    seq_nums = child.read(columns=["seq_num"])["seq_num"]
                    existing.rows[(key, name, EVENTS_KEY)] = len(seq_nums)
                    done.update(int(s) for s in seq_nums)
                    continue
                existing.parts[(key, name, result)] = _next_part(child)
                for _, part in child.items():
                    done.update(int(s) for s in part.metadata.get("seq_num", ()))
        found[analysis.metadata["plugin"]] = existing
    return found


def _next_part(node: Any) -> int:
    return max((int(k) for k in node), default=-1) + 1
