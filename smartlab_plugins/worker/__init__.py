"""The analysis worker, by job.

- :mod:`~smartlab_plugins.worker.core`: :class:`Worker`, which takes shipments
  of documents and passes each run's batches through its plugins;
- :mod:`~smartlab_plugins.worker.selection`: which plugins analyse a run;
- :mod:`~smartlab_plugins.worker.validation`: the fields a plugin is given, checked,
  and the results it returns, checked;
- :mod:`~smartlab_plugins.worker.supervision`: lanes, timeouts and memory, so a
  slow, hung or leaking plugin never holds up the others;
- :mod:`~smartlab_plugins.worker.records`: error records, the analysis' metadata,
  run summaries and live messages.
"""

from smartlab_plugins.worker.core import Worker

__all__ = ["Worker"]
