"""Which run a document belongs to, as the RunEngine's side sees the stream.

A start document names its run (``uid``); a descriptor, stop, resource or
stream resource names it with ``run_start``; an event, datum or stream datum
names only its descriptor or resource. :class:`RunIndex` remembers the
documents that name a run so that the others can be traced back to it, and
forgets a run's entries at its stop document, so it stays as small as the
runs in flight.
"""

from __future__ import annotations

from typing import Any

#: Documents that name their run directly, and the key that does it.
RUN_KEYS = {
    "start": "uid",
    "descriptor": "run_start",
    "stop": "run_start",
    "resource": "run_start",
    "stream_resource": "run_start",
}
#: Documents that name their run through another document, and the key that names it.
PARENT_KEYS = {
    "event": "descriptor",
    "event_page": "descriptor",
    "datum": "resource",
    "datum_page": "resource",
    "stream_datum": "stream_resource",
}


def short_uid(uid: Any) -> str:
    """The first 8 characters of a uid, for messages. A malformed document's uid may hold
    lone surrogates, which no log file or UTF-8 stream can take: they are escaped."""
    return str(uid)[:8].encode("utf-8", "backslashreplace").decode("utf-8")


class RunIndex:
    """Trace any document to the uid of its run; never raises on a malformed one.

    Not thread-safe by itself: one thread notes and looks up.
    """

    def __init__(self) -> None:
        self._run_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._run_of)

    def note(self, name: Any, doc: Any) -> str | None:
        """The run of ``doc``, remembering it if ``doc`` is one that later documents name."""
        if not isinstance(doc, dict) or not isinstance(name, str):
            return None
        key = RUN_KEYS.get(name)
        if key is None:
            return self.run_of(name, doc)
        run = doc.get(key)
        if not isinstance(run, str):
            return None
        if name != "stop" and isinstance(doc.get("uid"), str):
            self._run_of[doc["uid"]] = run
        return run

    def run_of(self, name: Any, doc: Any) -> str | None:
        """The run of ``doc`` from what has been noted, or None if it cannot be told."""
        if not isinstance(doc, dict) or not isinstance(name, str):
            return None
        if name in RUN_KEYS:
            run = doc.get(RUN_KEYS[name])
            return run if isinstance(run, str) else None
        parent = doc.get(PARENT_KEYS.get(name, ""))
        if name in ("datum", "datum_page") and not parent:
            datum_id = doc.get("datum_id")
            if isinstance(datum_id, list):  # a datum page: its datums share one resource
                datum_id = datum_id[0] if datum_id else None
            parent = str(datum_id or "").partition("/")[0]
        return self._run_of.get(parent) if isinstance(parent, str) else None

    def forget(self, run: str) -> None:
        """Drop what was noted for ``run`` (at its stop document)."""
        for key in [k for k, v in self._run_of.items() if v == run]:
            del self._run_of[key]
