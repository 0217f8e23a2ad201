"""Publishing to Tiled: analyses' results and the raw run, from the worker.

Modules, one job each:

- :mod:`~smartlab_plugins.layout`: where results live (keys, specs, the error record)
- :mod:`~smartlab_plugins.publish.results_writer`: :class:`Publisher`, analyses to Tiled
- :mod:`~smartlab_plugins.publish.raw`: :class:`RawRunWriter`, the raw run via ``TiledWriter``
- :mod:`~smartlab_plugins.publish.journal`: writes kept on local disk until Tiled has them
- :mod:`smartlab_plugins.retry` (beside it): the one retry policy of every network call
"""

from smartlab_plugins.layout import (
    ANALYSIS_SPEC,
    ERRORS_KEY,
    EVENTS_KEY,
    ROOT_KEY,
    RUN_LINKS_KEY,
    STREAM_SPEC,
    ErrorRecord,
    json_clean,
)
from smartlab_plugins.publish.raw import RawRunWriter
from smartlab_plugins.publish.results_writer import Publisher, Write
from smartlab_plugins.retry import Backoff, is_transient

__all__ = [
    "ANALYSIS_SPEC",
    "ERRORS_KEY",
    "EVENTS_KEY",
    "ROOT_KEY",
    "RUN_LINKS_KEY",
    "STREAM_SPEC",
    "Backoff",
    "ErrorRecord",
    "Publisher",
    "RawRunWriter",
    "Write",
    "is_transient",
    "json_clean",
]
