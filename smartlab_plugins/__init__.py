"""SmartLab: machine learning inside the data-acquisition loop.

``RE.subscribe(SmartLab())`` routes a RunEngine's documents to the installed
analysis plugins and publishes their results to Tiled while the scan runs.
"""

from smartlab_plugins.callbacks.smartlab import SmartLab, TiledUnavailableError
from smartlab_plugins.hookspecs import (
    DataSpec,
    EventBatch,
    ModelInfo,
    PluginInfo,
    Results,
    RunContext,
    hookimpl,
)
from smartlab_plugins.manager import PluginManager, UnknownPluginError

__version__ = "0.1.0"

__all__ = [
    "DataSpec",
    "EventBatch",
    "ModelInfo",
    "PluginInfo",
    "PluginManager",
    "Results",
    "RunContext",
    "SmartLab",
    "TiledUnavailableError",
    "UnknownPluginError",
    "hookimpl",
]
