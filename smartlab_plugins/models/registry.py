"""The trainable models, by name: what ``smartlab train`` and ``smartlab evaluate`` accept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself imports no torch, so the CLI can list models quickly
    from smartlab_plugins.models.training import Task, TrainingConfig


def _spinwave() -> Task:
    from smartlab_plugins.models.spinwave import SpinWaveTask

    return SpinWaveTask()


def _phase() -> Task:
    from smartlab_plugins.models.phase import PhaseTask

    return PhaseTask()


def _transition() -> Task:
    from smartlab_plugins.models.transition import TransitionTask

    return TransitionTask()


def _micrograph() -> Task:
    from smartlab_plugins.models.segmentation import MicrographTask

    return MicrographTask()


TASKS: dict[str, Callable[[], Task]] = {
    "spinwave_cnn": _spinwave,
    "phase_cnn": _phase,
    "transition_lstm": _transition,
    "micrograph_unet": _micrograph,
}


#: The classical baseline sets (:data:`smartlab_plugins.models.baselines.BASELINES`), named here
#: too so that the command line lists them without importing scikit-learn or torch.
BASELINE_NAMES = ("spinwave_baselines", "phase_baselines")

#: Where a model's training differs from :class:`TrainingConfig`'s defaults: the settings its
#: shipped weights were trained with, which ``smartlab train NAME`` reproduces.
TRAINING: dict[str, dict[str, Any]] = {
    "spinwave_cnn": {"n_samples": 10000},
    "phase_cnn": {"n_samples": 10000, "max_minutes": 10.0},
    "transition_lstm": {"n_samples": 8000, "learning_rate": 2e-3, "max_minutes": 30.0},
    "micrograph_unet": {
        "n_samples": 2400,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "max_minutes": 36.0,
    },
}


def training_config(name: str, **given: Any) -> TrainingConfig:
    """Model ``name``'s training settings, with ``given`` ones (not None) taking precedence."""
    if name not in TASKS:
        raise KeyError(f"unknown model {name!r}; trainable models: {', '.join(sorted(TASKS))}")
    from smartlab_plugins.models.training import TrainingConfig

    chosen = {key: value for key, value in given.items() if value is not None}
    return replace(TrainingConfig(), **{**TRAINING.get(name, {}), **chosen})


def task(name: str) -> Task:
    """The task that trains and scores model ``name``."""
    if name not in TASKS:
        raise KeyError(f"unknown model {name!r}; trainable models: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
