"""Publishing to Tiled: analyses' results and the raw run, from the worker.

Modules, one job each:

- :mod:`~smartlab_plugins.layout`: where results live (keys, specs, the error record)
- :mod:`~smartlab_plugins.publish.results_writer`: :class:`Publisher`, analyses to Tiled
- :mod:`~smartlab_plugins.publish.raw`: :class:`RawRunWriter`, the raw run via ``TiledWriter``
- :mod:`~smartlab_plugins.publish.journal`: writes kept on local disk until Tiled has them
- :mod:`smartlab_plugins.retry` (beside it): the one retry policy of every network call
"""

from smartlab_plugins.publish.raw import RawRunWriter
from smartlab_plugins.publish.results_writer import Publisher, Write

__all__ = ["Publisher", "RawRunWriter", "Write"]
