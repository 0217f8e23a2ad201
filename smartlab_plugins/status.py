"""What SmartLab has been doing, as the Tiled server records it (`smartlab status`, `%smartlab`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from smartlab_plugins.layout import ROOT_KEY

COLUMNS = ("started", "plugin", "run", "status", "events", "errors", "dropped")


def recent_analyses(client: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The ``limit`` most recently started analyses, newest first, as plain rows."""
    if ROOT_KEY not in client:
        return []
    rows = []
    for node in client[ROOT_KEY].values():
        metadata = node.metadata
        rows.append(
            {
                "started": metadata.get("started") or 0.0,
                "plugin": metadata.get("plugin", "?"),
                "run": str(metadata.get("run_uid", "?"))[:8],
                "status": metadata.get("status", "?"),
                "events": metadata.get("events", "-"),
                "errors": metadata.get("errors", "-"),
                "dropped": metadata.get("dropped", "-"),
            }
        )
    rows.sort(key=lambda row: row["started"], reverse=True)
    return rows[:limit]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`recent_analyses` rows, times as local clock times."""
    if not rows:
        return "no SmartLab results on this server yet"
    cells = [list(COLUMNS)]
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started"]))
        cells.append([started, *(str(row[c]) for c in COLUMNS[1:])])
    return format_table(cells)


def format_table(cells: Sequence[Sequence[str]]) -> str:
    """Rows of text cells as left-aligned columns, two spaces apart; the first row a header."""
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells)
    return "\n".join(line.rstrip() for line in lines)
