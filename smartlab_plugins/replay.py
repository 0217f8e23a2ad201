"""Re-run the enabled plugins over a run stored in Tiled.

The stored run is read back as its documents (bluesky-tiled-plugins'
``BlueskyRun.documents()``), fed through the same worker as a live scan, and
the new results are published beside the old ones with ``mode: "replay"`` in
their metadata. Nothing of the stored run is changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from tqdm.auto import tqdm

from smartlab_plugins.connection import connect
from smartlab_plugins.protocol import Shipment, WorkerConfig
from smartlab_plugins.worker.serving import Session

CHUNK = 256


class UnknownRunError(KeyError):
    """A run uid that the Tiled server does not hold."""

    def __init__(self, run_uid: str, tiled_uri: str) -> None:
        self.run_uid = run_uid
        self.tiled_uri = tiled_uri
        super().__init__(run_uid)

    def __str__(self) -> str:
        return (
            f"no run with uid {self.run_uid!r} in the Tiled server at {self.tiled_uri}; "
            "check the uid (`smartlab status` lists the recently analysed runs)"
        )


def replay(
    run_uid: str,
    tiled_uri: str,
    api_key: str | None,
    plugins: Iterable[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Analyse stored run ``run_uid`` again; return its run summary (one per run replayed)."""
    client = connect(tiled_uri, api_key)
    if run_uid not in client:
        raise UnknownRunError(run_uid, tiled_uri)
    run = client[run_uid]
    total = run.metadata.get("stop", {}).get("num_events", {})
    session = Session(
        WorkerConfig(
            tiled_uri=tiled_uri,
            api_key=api_key,
            enabled=list(plugins) if plugins is not None else None,
            raw=False,
            mode="replay",
        )
    )
    summaries: list[dict[str, Any]] = []
    with tqdm(
        total=sum(total.values()) or None,
        unit="event",
        disable=not progress,
        desc=f"replay {run_uid[:8]}",
    ) as bar:
        for chunk in _chunks(_documents(run), CHUNK):
            summaries.extend(session.ship(Shipment(chunk)))
            bar.update(sum(1 for name, _ in chunk if name == "event"))
    session.close(timeout=120)
    return summaries


def _documents(run: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The stored run's documents, as the plain mutable dicts a RunEngine emits."""
    for name, doc in run.documents():
        yield name, doc.to_dict() if hasattr(doc, "to_dict") else dict(doc)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
