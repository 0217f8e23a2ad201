"""SmartLab's demos: what ``smartlab demo`` runs, kept out of the library they show.

Each module is one demo, run by the ``smartlab demo`` command, which imports it only
then; nothing in ``smartlab_plugins`` imports a demo.

- :mod:`smartlab_demos.live`: ``smartlab demo`` (``make demo``), simulated scans with
  live analysis, results read back from Tiled.
- :mod:`smartlab_demos.distributed`: ``smartlab demo --distributed``, the same analysis
  through a Redis broker to two ``smartlab worker`` processes.
- :mod:`smartlab_demos.adaptive_in_loop` and :mod:`smartlab_demos.adaptive_queueserver`:
  the two halves of ``smartlab demo adaptive``.
- :mod:`smartlab_demos.target`: the Tiled server a demo publishes to.
"""
