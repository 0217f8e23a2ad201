"""``peak_stats``: peak statistics of every 1-D and 2-D field, and of the scan.

Per event, for each 1-D profile and each 2-D image (positions in pixels,
rows then columns for images)::

    <field>_max, <field>_argmax[_row|_col]     the maximum and where it is
    <field>_centroid[_row|_col]                intensity-weighted mean position
    <field>_sigma[_row|_col]                   intensity-weighted standard deviation
    <field>_fwhm[_row|_col]                    full width at half maximum (NaN if the
                                               peak does not fall below half on both sides)
    <field>_sum                                integrated intensity

Centroid, sigma and FWHM are taken above a baseline, the median of the
frame, clipped at zero: a flat, noisy background then neither pulls the
centroid nor widens sigma, as long as the peak covers less than half of the
frame. Images are reduced to their row and column projections for the
centroid and widths. For a Gaussian, sigma = FWHM / 2.3548. Units (the
analysis' ``units`` metadata): maximum and integral in the field's own unit
(its descriptor's ``units``), positions and widths in pixels.

Per run (the summary), like bluesky's ``PeakStats`` but published: for each
scalar detector field and each field's integrated intensity, the peak across
the scanned motor (or across ``seq_num`` for a count): position and value of
the maximum and minimum, centroid, and FWHM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import (
    DataSpec,
    EventBatch,
    PluginInfo,
    Results,
    RunContext,
    hookimpl,
)

NAME = "peak_stats"
VERSION = "1.0.0"
#: Per field read: intensities in the field's unit, positions and widths in pixels.
UNITS = {
    "{field}_max": "{field}",
    "{field}_sum": "{field}",
    **{
        f"{{field}}_{stat}{axis}": "pixel"
        for stat in ("argmax", "centroid", "sigma", "fwhm")
        for axis in ("", "_row", "_col")
    },
}


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Peak statistics need no model and run on the CPU."""
    return PluginInfo(
        name=NAME,
        version=VERSION,
        accepts=DataSpec(ndims=(0, 1, 2)),
        summary="maximum, centroid, width and integral of 1-D/2-D data; peak across the scan",
        units=UNITS,
    )


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Start empty series for the run-level peak."""
    run.state["x"] = []
    run.state["series"] = {}


@hookimpl
def smartlab_analyze(run: RunContext, stream: str, batch: EventBatch) -> Results | None:
    """Per-event statistics of profiles and images; scalars feed the run summary."""
    x_fields = _motor_fields(run, stream)
    run.state["x"].append(_scan_coordinate(batch, x_fields))
    run.state.setdefault("x_name", x_fields[0] if x_fields else "seq_num")
    scalars: dict[str, np.ndarray] = {}
    for name, values in batch.data.items():
        if name in x_fields:
            continue
        if values.ndim == 1:
            run.state["series"].setdefault(name, []).append(values.astype(float))
        elif values.ndim == 2:
            scalars.update(_prefixed(name, profile_stats(values)))
        elif values.ndim == 3:
            scalars.update(_prefixed(name, image_stats(values)))
        if values.ndim in (2, 3):
            run.state["series"].setdefault(f"{name}_sum", []).append(scalars[f"{name}_sum"])
    return Results(scalars=scalars) if scalars else None


@hookimpl
def smartlab_finish_run(run: RunContext, stop: Mapping[str, Any]) -> dict[str, Any] | None:
    """The peak of each series across the scan, keyed by field."""
    if not run.state.get("x"):
        return None
    x = np.concatenate(run.state["x"])
    summary: dict[str, Any] = {}
    for name, parts in run.state["series"].items():
        y = np.concatenate(parts)
        if len(y) == len(x) and len(y):
            summary[name] = {"x": run.state["x_name"], **scan_peak(x, y)}
    return summary or None


def profile_stats(profiles: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of each row of ``profiles`` (events x points), positions in points."""
    profiles = np.asarray(profiles, dtype=float)
    positions = np.arange(profiles.shape[1], dtype=float)
    weights = np.clip(profiles - np.median(profiles, axis=1, keepdims=True), 0.0, None)
    centroid, sigma = _moments(positions, weights)
    return {
        "max": profiles.max(axis=1),
        "argmax": profiles.argmax(axis=1).astype(float),
        "centroid": centroid,
        "sigma": sigma,
        "fwhm": np.array([fwhm(positions, row) for row in weights]),
        "sum": profiles.sum(axis=1),
    }


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of each image of ``images`` (events x rows x columns)."""
    images = np.asarray(images, dtype=float)
    n, rows, cols = images.shape
    flat_argmax = images.reshape(n, -1).argmax(axis=1)
    baseline = np.median(images.reshape(n, -1), axis=1)[:, None, None]
    weights = np.clip(images - baseline, 0.0, None)
    stats = {
        "max": images.reshape(n, -1).max(axis=1),
        "argmax_row": (flat_argmax // cols).astype(float),
        "argmax_col": (flat_argmax % cols).astype(float),
        "sum": images.reshape(n, -1).sum(axis=1),
    }
    for axis, label, length in ((2, "row", rows), (1, "col", cols)):
        projection = weights.sum(axis=axis)
        positions = np.arange(length, dtype=float)
        centroid, sigma = _moments(positions, projection)
        stats[f"centroid_{label}"] = centroid
        stats[f"sigma_{label}"] = sigma
        stats[f"fwhm_{label}"] = np.array([fwhm(positions, p) for p in projection])
    return stats


def fwhm(x: np.ndarray, y: np.ndarray) -> float:
    """Full width at half maximum of the highest peak above the minimum of ``y``, interpolated."""
    w = np.asarray(y, dtype=float) - np.min(y)
    peak = int(np.argmax(w))
    half = w[peak] / 2.0
    if half <= 0:
        return float("nan")
    below_left = np.flatnonzero(w[:peak] < half)
    below_right = np.flatnonzero(w[peak:] < half)
    if not len(below_left) or not len(below_right):
        return float("nan")
    i = below_left[-1]
    j = peak + below_right[0]
    left = x[i] + (half - w[i]) * (x[i + 1] - x[i]) / (w[i + 1] - w[i])
    right = x[j - 1] + (half - w[j - 1]) * (x[j] - x[j - 1]) / (w[j] - w[j - 1])
    return float(right - left)


def scan_peak(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The peak of ``y`` against ``x`` (unordered scan points are sorted by ``x``)."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    weights = y - y.min()
    total = weights.sum()
    return {
        "max": [float(x[np.argmax(y)]), float(y.max())],
        "min": [float(x[np.argmin(y)]), float(y.min())],
        "centroid": float((x * weights).sum() / total) if total > 0 else None,
        "fwhm": _finite_or_none(fwhm(x, y)) if len(x) > 2 else None,
        "points": len(x),
    }


def _moments(positions: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = weights.sum(axis=1)
    safe = np.where(total > 0, total, np.nan)
    centroid = (weights * positions).sum(axis=1) / safe
    variance = (weights * (positions[None, :] - centroid[:, None]) ** 2).sum(axis=1) / safe
    return centroid, np.sqrt(variance)


def _motor_fields(run: RunContext, stream: str) -> list[str]:
    """The data fields of the scanned motors in ``stream``, first motor first."""
    descriptor = run.descriptors.get(stream, {})
    object_keys = descriptor.get("object_keys", {})
    fields: list[str] = []
    for motor in run.motors:
        fields.extend(object_keys.get(motor, [motor]))
    return [f for f in fields if f in descriptor.get("data_keys", {})]


def _scan_coordinate(batch: EventBatch, x_fields: list[str]) -> np.ndarray:
    for name in x_fields:
        if name in batch.data:
            return np.asarray(batch.data[name], dtype=float)
        if name in batch.context:
            return np.asarray(batch.context[name], dtype=float)
    return batch.seq_num.astype(float)


def _prefixed(name: str, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{name}_{key}": value for key, value in stats.items()}


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
