"""Shorter garbage-collector pauses in SmartLab's long-lived processes.

A full (generation 2) collection walks every object the process holds. After
tiled, dask, pandas, SQLAlchemy and torch are imported that is millions of
objects, and on a 2-core machine each full collection stopped the Tiled
server for 150-300 ms, and the worker for ~100 ms, every few seconds of a
fast scan: the p99 of a result's way to a follower. Objects made at start-up
(modules, the app, a loaded model) live as long as the process, so they are
moved out of the collector's view once (``gc.freeze()``, as the Python docs
suggest for long-lived processes); it still collects everything made after.
"""

from __future__ import annotations

import gc
import sys


def freeze_what_lives_now() -> None:
    """Collect once, then leave every object alive now out of later collections.

    Call it when start-up is done (everything imported, the model loaded),
    not per run: an object frozen here that later becomes part of a
    reference cycle is never collected.
    """
    gc.collect()
    gc.freeze()


_modules_when_frozen = 0


def freeze_if_more_imported() -> bool:
    """:func:`freeze_what_lives_now` if modules were imported since it last ran here.

    For a process whose start-up happens bit by bit (the worker imports a
    plugin's libraries and loads its model on the plugin's first run): called
    at the end of every run, it freezes only after runs that imported
    something, so it runs a bounded number of times. True if it froze.
    """
    global _modules_when_frozen
    if len(sys.modules) <= _modules_when_frozen:
        return False
    freeze_what_lives_now()
    _modules_when_frozen = len(sys.modules)
    return True
