"""``phase_cnn``: the crystal phase of each diffraction frame, with calibrated probabilities.

Reads the ``mpb_image`` field (97 x 243 area-detector frames across a
morphotropic phase boundary) and publishes, per event, ``phase`` (the class
index), ``phase_name``, ``confidence`` and one probability per class
(``p_rhombohedral``, ``p_monoclinic``, ``p_tetragonal``, ``p_mixture``),
temperature-scaled as the model card records. Accuracy by distance to the
boundary and the calibration error are in the card
(``smartlab_plugins/models/weights/phase_cnn.json``).

Options (per run, ``RE(plan, smartlab={"options": {"phase_cnn": {...}}})``):
``resample: True`` interpolates frames of a different shape onto 97 x 243;
``saliency: True`` also publishes ``saliency`` (97 x 243): the gradient
magnitude of the winning class's logit, i.e. which rings decided it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import phase
from smartlab_plugins.models.inference import (
    describe_model_plugin,
    gradient_saliency,
    model_input,
    start_model_run,
)

NAME = phase.NAME
FIELD = "mpb_image"


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``mpb_image`` frames; the model is the shipped ``phase_cnn`` weights."""
    summary = "crystal phase probabilities from diffraction frames (the talk's CNN)"
    info = describe_model_plugin(NAME, phase.VERSION, FIELD, summary, stateless=True)
    probabilities = {f"p_{name}": "" for name in phase.class_names()}
    # the class index and the probabilities are dimensionless; saliency is relative
    units = {"phase": "", "confidence": "", **probabilities, "saliency": "a.u."}
    return dataclasses.replace(info, units=units)


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) and check the model before the first event."""
    start_model_run(run, NAME, phase.PhaseTask())


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Classify every frame of the batch."""
    frames = model_input(run, batch, NAME, FIELD, phase.FIELD_SHAPE)
    if frames is None:
        return None
    model, task = run.state["model"], run.state["task"]
    x = phase.preprocess(frames)
    probabilities = task.probabilities(model.run(x), model.card.extras)
    winner = probabilities.argmax(axis=1)
    results = Results(
        scalars={
            "phase": winner,
            "phase_name": np.array(task.outputs, dtype=object)[winner],
            "confidence": probabilities.max(axis=1),
            **{f"p_{name}": probabilities[:, i] for i, name in enumerate(task.outputs)},
        }
    )
    if run.options.get("saliency"):
        bands = np.stack(
            [gradient_saliency(model, x[i : i + 1], int(c))[0] for i, c in enumerate(winner)]
        )
        full = np.repeat(bands, phase.ROW_BAND, axis=1)
        results.arrays["saliency"] = np.pad(
            full, ((0, 0), (0, phase.FIELD_SHAPE[0] - full.shape[1]), (0, 0)), mode="edge"
        )
        results.dims["saliency"] = ("row", "column")
    return results
