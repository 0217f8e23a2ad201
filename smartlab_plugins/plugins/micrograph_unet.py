"""``micrograph_unet``: the phase map and the phase area fractions of every SEM frame.

Reads the ``camera_image`` field (SEM frames in secondary-electron yield
units at 0.05 um per pixel, as the simulated ``SEMCamera`` records them) and
publishes, per event, the array ``mask`` (uint8 phase ids, dims ``row``,
``column``: 0 ferrite, 1 spheroidite, 2 grain-boundary carbide, 3 pearlite)
and the scalars ``fraction_ferrite``, ``fraction_spheroidite``,
``fraction_gb_carbide`` and ``fraction_pearlite`` (area fractions of the
frame). The run's summary holds the mean fractions over its frames. The
model, its training and its held-out accuracy are in its model card
(``smartlab_plugins/models/weights/micrograph_unet.json``).

Frame size: the U-Net is fully convolutional, so any frame of at least 16 x 16
pixels is segmented as it is (reflect-padded to a multiple of 4; frames above
512 pixels on a side in overlapping tiles, so memory stays bounded); the
``resample`` option is not needed. A smaller frame, or one that is not 2-D, is
refused for its events with a message naming the expected and actual shape.

Options (per run, ``RE(plan, smartlab={"options": {"micrograph_unet": {...}}})``):
``uncertainty: True`` also publishes the array ``uncertainty`` (float32,
``row``, ``column``: 1 - the largest calibrated phase probability per pixel)
and its per-frame mean ``uncertainty_mean``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.inference import ModelPlugin

PLUGIN = ModelPlugin(
    name=segmentation.NAME,
    version=segmentation.VERSION,
    field=segmentation.FIELD,
    summary="phase map (array) and phase area fractions of SEM frames (U-Net)",
    task=segmentation.MicrographTask,
)
NAME = PLUGIN.name
FIELD = PLUGIN.field
DIMS = ("row", "column")


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``camera_image`` frames; the model is the shipped ``micrograph_unet`` weights."""
    fractions = {f"fraction_{name}": "" for name in segmentation.phase_names()}
    # phase ids, area fractions and 1 - probability are all dimensionless
    return PLUGIN.describe({"mask": "", **fractions, "uncertainty": "", "uncertainty_mean": ""})


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) and check the model before the first event."""
    PLUGIN.start_run(run)


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Segment every frame of the batch; publish its mask and its phase fractions."""
    if FIELD not in batch.data:
        return None
    frames = checked_frames(batch)
    model = run.state["model"]
    wants_uncertainty = bool(run.options.get("uncertainty", False))
    result = segmentation.segment(
        model.net,
        frames,
        temperature=model.card.extras.get("temperature", 1.0),
        uncertainty=wants_uncertainty,
    )
    names = segmentation.phase_names()
    run.state["fraction_sums"] = run.state.get("fraction_sums", 0.0) + result.fractions.sum(axis=0)
    run.state["frames"] = run.state.get("frames", 0) + len(frames)
    results = Results(
        scalars={f"fraction_{name}": result.fractions[:, k] for k, name in enumerate(names)},
        arrays={"mask": result.mask},
        dims={"mask": DIMS},
    )
    if wants_uncertainty:
        results.arrays["uncertainty"] = result.uncertainty
        results.dims["uncertainty"] = DIMS
        results.scalars["uncertainty_mean"] = result.uncertainty.mean(axis=(1, 2))
    return results


@hookimpl
def smartlab_finish_run(run: RunContext, stop: Mapping[str, Any]) -> dict[str, Any] | None:
    """The number of frames segmented and their mean phase fractions."""
    frames = run.state.get("frames", 0)
    if not frames:
        return None
    means = np.asarray(run.state["fraction_sums"]) / frames
    return {
        "frames": frames,
        "mean_fractions": {
            name: float(means[k]) for k, name in enumerate(segmentation.phase_names())
        },
    }


def checked_frames(batch: EventBatch) -> np.ndarray:
    """The batch's frames, refused unless 2-D with at least ``MIN_SIDE`` rows and columns."""
    frames = np.asarray(batch.data[FIELD])
    shape = frames.shape[1:]
    if len(shape) != 2 or min(shape) < segmentation.MIN_SIDE:
        low = segmentation.MIN_SIDE
        raise ValueError(
            f"{NAME}: expected 2-D frames of at least {low}x{low} pixels in field {FIELD!r}, "
            f"got {'x'.join(map(str, shape))} (events {int(batch.seq_num[0])}-"
            f"{int(batch.seq_num[-1])})"
        )
    return frames
