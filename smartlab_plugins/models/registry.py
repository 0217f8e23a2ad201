"""The trainable models, by name: what ``smartlab train`` and ``smartlab evaluate`` accept."""

from __future__ import annotations

from collections.abc import Callable

from smartlab_plugins.models.training import Task


def _spinwave() -> Task:
    from smartlab_plugins.models.spinwave import SpinWaveTask

    return SpinWaveTask()


def _phase() -> Task:
    from smartlab_plugins.models.phase import PhaseTask

    return PhaseTask()


TASKS: dict[str, Callable[[], Task]] = {"spinwave_cnn": _spinwave, "phase_cnn": _phase}


def task(name: str) -> Task:
    """The task that trains and scores model ``name``."""
    if name not in TASKS:
        raise KeyError(f"unknown model {name!r}; trainable models: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
