"""Documents over a message broker (Redis Streams) to remote analysis workers.

The RunEngine's side subscribes :class:`BrokerPublisher`; ``smartlab worker``
(:class:`BrokerWorker`) consumes, analyses with the same plugins as the
in-process :class:`~smartlab_plugins.SmartLab`, and publishes to Tiled. See
``docs/distributed.md``.
"""

from smartlab_plugins.transport.consumer import BrokerWorker
from smartlab_plugins.transport.publisher import BrokerPublisher
from smartlab_plugins.transport.settings import BrokerSettings, BrokerUnreachable

__all__ = ["BrokerPublisher", "BrokerSettings", "BrokerUnreachable", "BrokerWorker"]
