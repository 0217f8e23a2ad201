"""Reading SmartLab's results back from Tiled, during or after a run.

Plain ``tiled.client`` is enough (see the query tutorial); these helpers save
a few lines::

    from tiled.client import from_uri
    from smartlab_plugins.results import find_analyses, follow, read_events

    client = from_uri(uri, api_key=key)
    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    table = read_events(analysis)          # one row per analysed event

    with follow(client, uid, "peak_stats", print):   # during a run: rows pushed as published
        ...
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tiled.queries import Key

from smartlab_plugins.following import Follower, follow
from smartlab_plugins.layout import ERRORS_KEY, EVENTS_KEY, ROOT_KEY

__all__ = [
    "EventFollower",
    "Follower",
    "find_analyses",
    "follow",
    "read_array",
    "read_errors",
    "read_events",
]


def find_analyses(
    client: Any,
    run_uid: str | None = None,
    plugin: str | None = None,
    **metadata: Any,
) -> list[Any]:
    """Analysis nodes matching a run uid, a plugin and any other metadata, oldest first."""
    if ROOT_KEY not in client:
        return []
    results = client[ROOT_KEY]
    criteria = {"run_uid": run_uid, "plugin": plugin, **metadata}
    for key, value in criteria.items():
        if value is not None:
            results = results.search(Key(key) == value)
    return sorted(results.values(), key=lambda node: node.metadata.get("started", 0))


def read_events(analysis: Any, stream: str = "primary") -> pd.DataFrame:
    """Every per-event result of one stream so far, ordered by ``seq_num``."""
    tables = _tables(analysis, stream, EVENTS_KEY)
    if not tables:
        return pd.DataFrame()
    return _by_seq_num(tables)


def read_array(analysis: Any, name: str, stream: str = "primary") -> np.ndarray:
    """An array result of one stream so far, one leading entry per event."""
    node = _child(analysis, stream, name)
    if node is None or not len(node):
        return np.empty((0,))
    return np.concatenate([np.asarray(part.read()) for part in _parts_of(node)])


def read_errors(analysis: Any) -> pd.DataFrame:
    """Every error recorded for this analysis so far."""
    tables = _tables(analysis, None, ERRORS_KEY)
    if not tables:
        return pd.DataFrame(columns=["plugin", "stage", "stream", "seq_num", "error", "message"])
    return pd.concat(tables, ignore_index=True)


class EventFollower:
    """The rows of one analysis' stream as they are published, for a reader that polls.

    Each :meth:`poll` reads the ``events`` table and returns the rows past the
    last ``seq_num`` returned. :func:`follow` is the way to be told instead of
    asking: Tiled pushes each append to it as it lands.
    """

    def __init__(self, analysis: Any, stream: str = "primary") -> None:
        self.analysis = analysis
        self.stream = stream
        self.last_seq_num: int | None = None

    def poll(self) -> pd.DataFrame:
        """The rows published since the last poll (empty if none), ordered by ``seq_num``."""
        table = read_events(self.analysis.refresh(), self.stream)
        if table.empty:
            return table
        if self.last_seq_num is not None:
            table = table[table["seq_num"] > self.last_seq_num].reset_index(drop=True)
        if not table.empty:
            self.last_seq_num = int(table["seq_num"].iloc[-1])
        return table


def _by_seq_num(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Parts' tables as one, ordered by ``seq_num`` (stable: equal seq_nums keep part order)."""
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values("seq_num", kind="stable").reset_index(drop=True)


def _tables(analysis: Any, stream: str | None, name: str) -> list[pd.DataFrame]:
    """The table ``name`` (of ``stream``) as one frame in a list, or its parts' frames.

    Analyses published before tables were appendable kept immutable parts.
    """
    node = _child(analysis, stream, name)
    if node is None:
        return []
    if node.structure_family == "table":
        return [node.read()]
    return [part.read() for part in _parts_of(node)]


def _child(analysis: Any, stream: str | None, name: str) -> Any:
    node = analysis
    for key in (stream, name):
        if key is None:
            continue
        if key not in node:
            return None
        node = node[key]
    return node


def _parts_of(node: Any) -> list[Any]:
    return [part for _, part in sorted(node.items(), key=lambda item: item[0])]
