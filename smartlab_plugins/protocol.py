"""The messages between the RunEngine's process and its analysis worker.

Each message is a small dataclass, sent as is (pickled over the child
process' socket, or put on a queue for a worker thread). The parent sends
:class:`Shipment` s of documents and the requests below, each answered by one
:class:`Reply`; the worker sends, besides, :class:`Ready` or
:class:`Failed` once, :class:`Log` records, one :class:`RunFinished` per
run and :class:`LiveResults` for live views.

This module imports nothing of SmartLab's, so both sides (and the broker's
consumer) can share it without pulling in the other's dependencies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

#: What happens when the far side cannot keep up: documents or batches wait, or are dropped.
BACKPRESSURE = ("spill", "drop")


def check_backpressure(backpressure: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``backpressure`` is one of them."""
    if backpressure not in BACKPRESSURE:
        raise ValueError(f"backpressure must be one of {BACKPRESSURE}, got {backpressure!r}")


@dataclass(frozen=True)
class Limits:
    """How much the worker takes on at once, and when it gives a plugin up.

    The one place of each default: ``SmartLab(...)``, the worker and its
    supervisor take theirs from here (see ``SmartLab`` for what each means).
    """

    max_batch: int = 256
    max_failures: int = 3
    plugin_timeout: float = 30.0
    lane_capacity: int = 64
    max_growth_mb: float = 2048.0
    backpressure: str = "spill"

    def __post_init__(self) -> None:
        check_backpressure(self.backpressure)
        for name in ("max_batch", "max_failures", "plugin_timeout", "lane_capacity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, got {getattr(self, name)!r}")


# -- parent to worker ---------------------------------------------------------


@dataclass
class WorkerConfig:
    """Everything a worker needs, picklable so a child process can rebuild it."""

    tiled_uri: str
    api_key: str | None
    enabled: list[str] | None = None
    registered: list[object] = field(default_factory=list)
    raw: bool = True
    limits: Limits = field(default_factory=Limits)
    nice: int = 5
    log_level: int = logging.INFO
    mode: str = "live"
    annotations: dict[str, Any] = field(default_factory=dict)
    #: Folder of the local journal of results not yet in Tiled; None keeps them in memory only.
    spool_dir: str | None = None
    #: Dask scheduler (or ``local[:N]``) for stateless plugins' batches; None: analyse here.
    compute: str | None = None
    #: Folders detector files may be read from; None: any but a Tiled server's own folder.
    data_roots: list[str] | None = None
    #: Largest declared size of one event's file-backed data; None: the default budget.
    max_event_bytes: int | None = None


@dataclass
class Shipment:
    """Documents sent to the worker in one go, and the RunEngine side's drop counts."""

    docs: list[tuple[str, Any]]
    #: Events dropped on the RunEngine's side so far, by run uid.
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Enable:
    """Enable the plugin ``name`` for the session's following runs."""

    name: str


@dataclass(frozen=True)
class Disable:
    """Disable the plugin ``name`` for the session's following runs."""

    name: str


@dataclass(frozen=True)
class Register:
    """Register a plugin, named by a reference the worker can import (or the object)."""

    reference: Any


@dataclass(frozen=True)
class StatusRequest:
    """Ask for the worker's state: open runs, enabled plugins, publisher counts."""


@dataclass(frozen=True)
class SetLive:
    """Which plugins' results to forward for live views, and whether arrays and inputs too."""

    wanted: dict[str, dict[str, bool]]


@dataclass(frozen=True)
class Flush:
    """Wait until everything shipped so far is analysed and published, for ``timeout`` s."""

    timeout: float | None


@dataclass(frozen=True)
class Close:
    """Finish writing (for at most ``timeout`` s) and stop; answered with whether all was."""

    timeout: float | None


#: The requests, each answered by one :class:`Reply`.
Request = Enable | Disable | Register | StatusRequest | SetLive | Flush | Close


# -- worker to parent ---------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The worker is built and waits for documents."""

    plugins: list[str]
    enabled: list[str]


@dataclass(frozen=True)
class Failed:
    """The worker could not be built; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class Log:
    """A log record of the worker's, as ``LogRecord.__dict__``, for the parent to log."""

    record: dict[str, Any]


@dataclass(frozen=True)
class RunFinished:
    """A run's summary: per plugin, events analysed, errors, drops."""

    summary: dict[str, Any]


@dataclass(frozen=True)
class LiveResults:
    """One batch's results for live views (:func:`smartlab_plugins.worker.records.live_message`)."""

    message: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """The answer to the last request: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None
