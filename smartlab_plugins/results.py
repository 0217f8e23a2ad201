"""Reading SmartLab's results back from Tiled, during or after a run.

Plain ``tiled.client`` is enough (see the README); these helpers only save
the concatenation of immutable parts::

    from tiled.client import from_uri
    from smartlab_plugins.results import find_analyses, read_events

    client = from_uri(uri, api_key=key)
    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    table = read_events(analysis)          # one row per analysed event

    follower = EventFollower(analysis)     # during a run: only what is new, each part read once
    new_rows = follower.poll()
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tiled.queries import Key

from smartlab_plugins.publish import ERRORS_KEY, EVENTS_KEY, ROOT_KEY


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
    parts = _parts(analysis, stream, EVENTS_KEY)
    if not parts:
        return pd.DataFrame()
    return _by_seq_num([part.read() for part in parts])


def read_array(analysis: Any, name: str, stream: str = "primary") -> np.ndarray:
    """An array result of one stream so far, one leading entry per event."""
    parts = _parts(analysis, stream, name)
    if not parts:
        return np.empty((0,))
    return np.concatenate([np.asarray(part.read()) for part in parts])


def read_errors(analysis: Any) -> pd.DataFrame:
    """Every error recorded for this analysis so far."""
    parts = _parts(analysis, None, ERRORS_KEY)
    if not parts:
        return pd.DataFrame(columns=["plugin", "stage", "stream", "seq_num", "error", "message"])
    return pd.concat([part.read() for part in parts], ignore_index=True)


class EventFollower:
    """The rows of one analysis' stream as they are published, each part read once.

    Parts are immutable and numbered in the order they are written, so a
    reader that remembers how many it has read asks the server only for the
    ones after them: a refresh, one listing offset by that count, and one
    read per new part. The cost of a poll does not grow with the run.
    """

    def __init__(self, analysis: Any, stream: str = "primary") -> None:
        self.analysis = analysis
        self.stream = stream
        self.parts_read = 0
        self._events: Any = None

    def poll(self) -> pd.DataFrame:
        """The rows published since the last poll (empty if none), ordered by ``seq_num``."""
        events = self._events_node()
        if events is None:
            return pd.DataFrame()
        parts = sorted(events.refresh().items()[self.parts_read :])  # one listing request
        if not parts:
            return pd.DataFrame()
        self.parts_read += len(parts)
        return _by_seq_num([part.read() for _, part in parts])

    def _events_node(self) -> Any:
        """The stream's events container, once it exists (the analysis is refreshed until then)."""
        if self._events is None:
            analysis = self.analysis.refresh()
            if self.stream in analysis and EVENTS_KEY in analysis[self.stream]:
                self._events = analysis[self.stream][EVENTS_KEY]
        return self._events


def _by_seq_num(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Parts' tables as one, ordered by ``seq_num`` (stable: equal seq_nums keep part order)."""
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values("seq_num", kind="stable").reset_index(drop=True)


def _parts(analysis: Any, stream: str | None, name: str) -> list[Any]:
    node = analysis
    for key in (stream, name):
        if key is None:
            continue
        if key not in node:
            return []
        node = node[key]
    return [part for _, part in sorted(node.items(), key=lambda item: item[0])]
