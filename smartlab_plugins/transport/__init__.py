"""Documents over a message broker (Redis Streams) to remote analysis workers.

The RunEngine's side subscribes :class:`BrokerPublisher`; ``smartlab worker``
(:class:`BrokerWorker`) consumes, analyses with the same plugins as the
in-process :class:`~smartlab_plugins.SmartLab`, and publishes to Tiled. See
``docs/distributed.md``.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartlab_plugins.transport.consumer import BrokerWorker
    from smartlab_plugins.transport.publisher import BrokerPublisher
    from smartlab_plugins.transport.settings import BrokerSettings, BrokerUnreachable

#: Each public name and the module that defines it, imported on first use: the worker pulls in
#: bluesky-tiled-plugins, tiled and pandas, which the ``smartlab`` command's parser (it adds
#: ``smartlab worker`` from this package) and a RunEngine session with a publisher do not need.
_LAZY = {
    "BrokerPublisher": "smartlab_plugins.transport.publisher",
    "BrokerSettings": "smartlab_plugins.transport.settings",
    "BrokerUnreachable": "smartlab_plugins.transport.settings",
    "BrokerWorker": "smartlab_plugins.transport.consumer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'smartlab_plugins.transport' has no attribute {name!r}")


__all__ = ["BrokerPublisher", "BrokerSettings", "BrokerUnreachable", "BrokerWorker"]
