"""``micrograph_unet``: the phase map and the phase area fractions of every SEM frame.

Reads the ``camera_image`` field (SEM frames, as the simulated ``SEMCamera``
records them) and publishes, per event, the array ``mask`` (uint8 phase ids,
dims ``row``, ``column``: 0 ferrite, 1 spheroidite, 2 grain-boundary carbide,
3 pearlite) and the scalars ``fraction_ferrite``, ``fraction_spheroidite``,
``fraction_gb_carbide`` and ``fraction_pearlite`` (area fractions of the
frame), and ``ood_score`` and ``in_distribution`` (0: the frame, at the
training pixel size, looks unlike the training data; see
:mod:`smartlab_plugins.models.ood`). The run's summary holds the mean
fractions over its frames. The
model, its training and its held-out accuracy are in its model card
(``smartlab_plugins/models/weights/micrograph_unet.json``).

Grey scale. Each frame is rank normalised, so the answer does not depend on the
detector's gain, offset or gamma (any increasing map of the grey levels); the
phases are told apart by shape. A frame with no contrast (constant, blank, or
mostly one saturated value) is refused for its event, with an error naming it.

Pixel size. The model was trained at 0.05 um per pixel. When the field's data
key declares ``pixel_size`` and ``pixel_size_units`` (as the SEM camera's
does), a frame of another pixel size from 0.025 to 0.1 um is resampled to the
training one and its mask brought back to the frame's own shape; one outside
that range, or a declaration that is not a positive number with a length
unit, is refused for its events with an error naming the field and the value.
Without a declaration the frames are taken to be at the training pixel size,
which the plugin logs once per run.

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

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.inference import OOD_UNITS, ModelPlugin, log_once, ood_flags

logger = logging.getLogger(__name__)
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
    return PLUGIN.describe(
        {"mask": "", **fractions, **OOD_UNITS, "uncertainty": "", "uncertainty_mean": ""}
    )


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
    pixel_size = frame_pixel_size(run, batch)
    model = run.state["model"]
    wants_uncertainty = bool(run.options.get("uncertainty", False))
    result = segmentation.segment(
        model.net,
        frames,
        temperature=model.card.extras.get("temperature", 1.0),
        uncertainty=wants_uncertainty,
        pixel_size_um=pixel_size,
    )
    names = segmentation.phase_names()
    run.state["fraction_sums"] = run.state.get("fraction_sums", 0.0) + result.fractions.sum(axis=0)
    run.state["frames"] = run.state.get("frames", 0) + len(frames)
    x = segmentation.ood_input(frames, pixel_size)
    results = Results(
        scalars={
            **{f"fraction_{name}": result.fractions[:, k] for k, name in enumerate(names)},
            **ood_flags(run, NAME, model, x, logger, batch.seq_num),
        },
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


def _events(batch: EventBatch) -> str:
    """The batch's events, for error messages."""
    first, last = int(batch.seq_num[0]), int(batch.seq_num[-1])
    return f"event {first}" if first == last else f"events {first}-{last}"


def checked_frames(batch: EventBatch) -> np.ndarray:
    """The batch's frames, refused unless 2-D, at least ``MIN_SIDE`` a side, and with contrast.

    A failing batch is retried event by event by the worker, so the message
    ends up against the events that are wrong.
    """
    frames = np.asarray(batch.data[FIELD])
    shape = frames.shape[1:]
    if len(shape) != 2 or min(shape) < segmentation.MIN_SIDE:
        low = segmentation.MIN_SIDE
        raise ValueError(
            f"{NAME}: expected 2-D frames of at least {low}x{low} pixels in field {FIELD!r}, "
            f"got {'x'.join(map(str, shape))} ({_events(batch)})"
        )
    flat = segmentation.contrastless(segmentation.rank_normalised(frames))
    if flat.any():
        values = frames[flat].reshape(int(flat.sum()), -1)
        raise ValueError(
            f"{NAME}: frame in field {FIELD!r} has no contrast (most pixels equal "
            f"{float(np.median(values[0])):g}; {_events(batch.take(np.flatnonzero(flat)))}): "
            "a blank, constant or saturated frame is not segmented"
        )
    return frames


def frame_pixel_size(run: RunContext, batch: EventBatch) -> float:
    """The pixel size (um) of the batch's frames, as their data key declares it.

    Without a declaration: the training pixel size, logged once per run.
    Raises ValueError (the worker records it against each event) when the
    declaration is unusable or outside the range the model resamples.
    """
    data_key = run.descriptors.get(batch.stream, {}).get("data_keys", {}).get(FIELD, {})
    try:
        declared = segmentation.declared_pixel_size(dict(data_key), FIELD)
    except ValueError as exc:
        raise ValueError(f"{NAME}: {exc} ({_events(batch)})") from None
    if declared is None:
        log_once(
            logger,
            run,
            NAME,
            "no_pixel_size",
            logging.INFO,
            "field %r declares no pixel_size; assuming the training pixel size, %g um",
            FIELD,
            segmentation.TRAINING_PIXEL_SIZE_UM,
        )
        return segmentation.TRAINING_PIXEL_SIZE_UM
    try:
        segmentation.check_pixel_size(declared, FIELD)
    except ValueError as exc:
        raise ValueError(f"{exc} ({_events(batch)})") from None
    if not np.isclose(declared, segmentation.TRAINING_PIXEL_SIZE_UM, rtol=1e-3, atol=0.0):
        log_once(
            logger,
            run,
            NAME,
            "resampled",
            logging.INFO,
            "field %r declares pixel_size %g um; resampling its frames to the training %g um",
            FIELD,
            declared,
            segmentation.TRAINING_PIXEL_SIZE_UM,
        )
    return declared
