"""SmartLab: machine learning inside the data-acquisition loop.

``RE.subscribe(SmartLab())`` routes a RunEngine's documents to the installed
analysis plugins and publishes their results to Tiled while the scan runs.
"""

from typing import TYPE_CHECKING, Any

from smartlab_plugins.connection import TiledUnavailableError
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

if TYPE_CHECKING:
    from smartlab_plugins.callbacks.smartlab import SmartLab

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # SmartLab pulls in bluesky, tiled and pandas: import it on first use only,
    # so that `smartlab --help` and `import smartlab_plugins.hookspecs` stay fast.
    if name == "SmartLab":
        from smartlab_plugins.callbacks.smartlab import SmartLab

        return SmartLab
    raise AttributeError(f"module 'smartlab_plugins' has no attribute {name!r}")


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
