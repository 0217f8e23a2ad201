"""Shifted instruments: named generator settings a model was not trained on, and garbage inputs.

``smartlab evaluate MODEL --shift NAME`` simulates a test set with one of
these (:func:`evaluate_shift`) beside an in-distribution one from the same
seed's stream, and reports the model's metrics on it, how well ``ood_score``
tells the two apart (AUROC, :func:`~smartlab_plugins.models.ood.auroc`), the
share of each set flagged, and whether the model's own uncertainty stays
honest (:func:`honesty`): for a regression the share of truths inside the
reported 68 % interval, for a classifier the share of confident (p >= 0.9)
wrong answers, on all events and on the events not flagged.

A shift is a set of overrides of the model's training generator config
(:data:`SHIFTS`; a dotted key reaches a nested config, e.g.
``structure.pixel_size_um``) or one of the :data:`GARBAGE` transforms of the
simulated raw inputs (zeros, a constant, the negated counts, structureless
noise of the same mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartlab_plugins.models import ood
from smartlab_plugins.models.registry import task as task_named
from smartlab_plugins.models.training import Split, predict
from smartlab_plugins.settings import ConfigurationError

CONFIDENT = 0.9  # a classifier's answer at or above this probability is confident


@dataclass(frozen=True)
class Shift:
    """A named change of instrument: generator overrides, or a transform of the raw inputs."""

    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    garbage: str | None = None  # one of GARBAGE


def _zeros(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.zeros_like(x)


def _constant(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.full_like(x, float(np.mean(x)))


def _negated(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return -x


def _noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    axes = tuple(range(1, x.ndim))
    values = np.asarray(x, dtype=np.float64)
    mean, std = values.mean(axis=axes, keepdims=True), values.std(axis=axes, keepdims=True)
    return np.clip(rng.normal(mean, std, size=x.shape), 0.0, None).astype(x.dtype)


#: Inputs that are no measurement: each replaces every simulated input of the set.
GARBAGE: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "zeros": ("every value 0", _zeros),
    "constant": ("every value the input's mean", _constant),
    "negated": ("the counts negated", _negated),
    "noise": ("Gaussian noise of the input's mean and spread (clipped at 0), no structure", _noise),
}

_GARBAGE_SHIFTS = {
    name: Shift(f"garbage: {description}", garbage=name)
    for name, (description, _) in GARBAGE.items()
}

#: Named shifted instruments per model (plus the garbage inputs, for every model).
SHIFTS: dict[str, dict[str, Shift]] = {
    "spinwave_cnn": {
        "resolution": Shift(
            "energy resolution 6 % of Ei (trained: 3 %)", {"resolution_fraction": 0.06}
        ),
        "background": Shift("background 10x (0.2 counts/bin/s)", {"background_rate": 0.2}),
        "incident_energy": Shift("incident energy 30 meV (trained: 20 meV)", {"ei": 30.0}),
        "counting_time": Shift("counting time 60 s (trained: 600 s)", {"counting_time": 60.0}),
        "in_plane_average": Shift(
            "|Q| averaged in the layer plane only (a textured sample)", {"average": "in_plane"}
        ),
        **_GARBAGE_SHIFTS,
    },
    "phase_cnn": {
        "detector_distance": Shift(
            "detector at 160-180 mm (trained: 115-140 mm), declared",
            {"distance_range": (160.0, 180.0)},
        ),
        "beam_centre": Shift(
            "beam centre off by up to 8 pixels (trained: 1.5)", {"beam_jitter": 8.0}
        ),
        "counting_time": Shift("counting time 0.1 s (trained: 1 s)", {"count_time": 0.1}),
        "background": Shift(
            "background 60-120 counts/pixel (trained: 10-30)", {"background_range": (60.0, 120.0)}
        ),
        **_GARBAGE_SHIFTS,
    },
    "transition_lstm": {
        "weak_superlattice": Shift(
            "octahedral tilts of 1.5-3 degrees (trained: 4-9): superlattice lines ~5x weaker",
            {"tilt_range": (1.5, 3.0)},
        ),
        "background": Shift(
            "background 1000 counts/channel (trained: 200)", {"background": 1000.0}
        ),
        "fast_ramp": Shift(
            "ramps of 12-20 K/min (trained: 2-8 K/min)", {"ramp_rate_range": (12.0, 20.0)}
        ),
        "counting_time": Shift(
            "a fifth of the counts per frame", {"intensity_scale": 0.4, "background": 40.0}
        ),
        **_GARBAGE_SHIFTS,
    },
    "micrograph_unet": {
        "gain_gamma": Shift(
            "detector gain 3-6 and gamma 2-3 (trained: 0.5-2 and 0.6-1.6)",
            {"gain": (3.0, 6.0), "gamma": (2.0, 3.0)},
        ),
        "magnification": Shift(
            "frames at 0.1 um/pixel read as the training 0.05 um/pixel (no pixel size declared)",
            {"structure.pixel_size_um": 0.1},
        ),
        "dose": Shift("electron dose 40 (trained: 400): ten times noisier", {"dose": 40.0}),
        **_GARBAGE_SHIFTS,
    },
}


def shift_names(name: str) -> list[str]:
    """The shifts defined for model ``name``."""
    return list(SHIFTS.get(name, {}))


def get_shift(name: str, shift: str) -> Shift:
    """The named shift of model ``name``, or a ConfigurationError listing those there are."""
    shifts = SHIFTS.get(name)
    if not shifts:
        raise ConfigurationError(f"no shifted instruments are defined for {name!r}")
    if shift not in shifts:
        raise ConfigurationError(
            f"{name} has no shift {shift!r}; choose one of {', '.join(shifts)}"
        )
    return shifts[shift]


def base_config(name: str) -> Any:
    """The generator config model ``name`` was trained on (its task's own)."""
    from smartlab_plugins.models import phase, segmentation, transition

    if name == "spinwave_cnn":
        from smartlab_plugins.devices.ins import SpinWaveConfig

        return SpinWaveConfig()
    configs: dict[str, Callable[[], Any]] = {
        "phase_cnn": phase.training_config,
        "transition_lstm": transition.training_config,
        "micrograph_unet": segmentation.crop_config,
    }
    if name not in configs:
        raise ConfigurationError(f"no generator config is known for {name!r}")
    return configs[name]()


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """``config`` with ``overrides`` (dotted keys reach nested dataclasses), validated anew."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not hasattr(config, head):
            raise ConfigurationError(f"{type(config).__name__} has no setting {head!r}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[key] = value
    for head, inner in nested.items():
        direct[head] = apply_overrides(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)


RAW_INPUT = {
    "spinwave_cnn": "sqw",
    "phase_cnn": "mpb_image",
    "transition_lstm": "patterns",
    "micrograph_unet": "images",
}


def simulated_split(name: str, config: Any, n: int, seed: int, garbage: str | None = None) -> Split:
    """A test split of model ``name`` from generator ``config`` (raw inputs replaced if garbage)."""
    from smartlab_plugins.cases import simulate_case

    task = task_named(name)
    case = task.case
    if name == "micrograph_unet":
        from smartlab_plugins.devices.microscopy import simulate
        from smartlab_plugins.models.segmentation import specimen_seed

        made = simulate(n, specimen_seed(seed), config)
    else:
        made = simulate_case(case, n, seed=seed, config=config, progress=False)
    if garbage is not None:
        key = RAW_INPUT[name]
        rng = np.random.default_rng(seed)
        made.inputs[key] = GARBAGE[garbage][1](np.asarray(made.inputs[key]), rng)
    return task.from_set(made)


def honesty(name: str, output: torch.Tensor, split: Split, extras: dict[str, Any]) -> dict:
    """Per event (frame, ramp-frame or crop): is the model's uncertainty honest about it?

    Returns arrays the caller averages over all events and over unflagged
    ones: ``in_68_interval_<constant>`` (regression: the truth inside the
    reported 68 % interval) or ``confident_wrong`` (classification: a wrong
    answer at p >= :data:`CONFIDENT`; for the U-Net the share of a crop's
    pixels that are).
    """
    task = task_named(name)
    if name == "spinwave_cnn":
        from smartlab_plugins.models.spinwave import LAPLACE_68, PARAMETERS

        mean, std = task.interpret(output, extras)  # Laplace: the 68 % interval is not 1 sigma
        covered = np.abs(mean - split.extra["truth"]) <= std * LAPLACE_68 / np.sqrt(2)
        return {f"in_68_interval_{p}": covered[:, i] for i, p in enumerate(PARAMETERS)}
    if name == "phase_cnn":
        p = task.probabilities(output, extras)
        wrong = p.argmax(axis=1) != split.y
        return {"confident_wrong": wrong & (p.max(axis=1) >= CONFIDENT)}
    if name == "transition_lstm":
        from smartlab_plugins.models.transition import probabilities

        p = probabilities(output).reshape(-1)
        truth = np.asarray(split.y).reshape(-1) >= 0.5
        confident = np.maximum(p, 1 - p) >= CONFIDENT
        return {"confident_wrong": confident & ((p >= 0.5) != truth)}
    if name == "micrograph_unet":
        probability = torch.softmax(output / extras.get("temperature", 1.0), dim=1)
        top, predicted = probability.max(dim=1)
        wrong = predicted.numpy() != np.asarray(split.y)
        confident_wrong = wrong & (top.numpy() >= CONFIDENT)
        return {"confident_wrong": confident_wrong.reshape(len(wrong), -1).mean(axis=1)}
    raise ConfigurationError(f"no honesty check is defined for {name!r}")


def _summary(checks: dict[str, np.ndarray], in_distribution: np.ndarray) -> dict[str, Any]:
    """Each check's mean over all events and over those left unflagged (None: none left)."""
    kept = in_distribution.astype(bool)
    return {
        key: {
            "all": float(np.mean(values)),
            "unflagged": float(np.mean(values[kept])) if kept.any() else None,
        }
        for key, values in checks.items()
    }


def scored(name: str, model: Any, split: Split) -> dict[str, Any]:
    """OOD scores and flags, honesty checks and raw outputs of one split."""
    if model.ood is None:
        raise ConfigurationError(
            f"{name}'s card has no out-of-distribution calibration; "
            f"run `smartlab calibrate-ood {name}`"
        )
    flags = model.ood.flags(ood.features(model.net, split.x))
    output = predict(model.net, split.x)
    checks = honesty(name, output, split, model.card.extras)
    return {"flags": flags, "output": output, "honesty": checks}


def evaluate_shift(name: str, shift_name: str, n: int, seed: int, model: Any) -> dict[str, Any]:
    """The model's metrics, OOD AUROC and honesty on shift ``shift_name`` against its own domain.

    The in-distribution set is simulated from ``seed``, the shifted one from
    ``seed + 1`` (another set of samples, so the AUROC does not pair them).
    """
    shift = get_shift(name, shift_name)
    task = task_named(name)
    config = base_config(name)
    shifted_config = apply_overrides(config, shift.overrides)
    try:
        shifted = simulated_split(name, shifted_config, n, seed + 1, shift.garbage)
    except ValueError as refused:  # the inputs are refused before any model sees them
        return {"shift": shift_name, "description": shift.description, "refused": str(refused)}
    reference = simulated_split(name, config, n, seed)
    base, moved = scored(name, model, reference), scored(name, model, shifted)
    per_event_in = base["flags"]["in_distribution"]
    per_event_out = moved["flags"]["in_distribution"]
    if name == "transition_lstm":  # flags are per frame; honesty checks too
        per_event_in, per_event_out = per_event_in.reshape(-1), per_event_out.reshape(-1)
    metrics = None
    if shift.garbage is None:
        metrics = task.evaluate(moved["output"], shifted, model.card.extras)
    return {
        "shift": shift_name,
        "description": shift.description,
        "n": n,
        "ood": {
            "auroc": ood.auroc(base["flags"]["ood_score"], moved["flags"]["ood_score"]),
            "flagged_in_distribution_set": float(1 - per_event_in.mean()),
            "flagged_shifted_set": float(1 - per_event_out.mean()),
            "threshold": model.ood.threshold,
        },
        "honesty": {
            "in_distribution_set": _summary(base["honesty"], per_event_in),
            "shifted_set": _summary(moved["honesty"], per_event_out),
        },
        "metrics": metrics,
    }
