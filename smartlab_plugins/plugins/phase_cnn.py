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

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import phase
from smartlab_plugins.models.inference import ModelPlugin, gradient_saliency

PLUGIN = ModelPlugin(
    name=phase.NAME,
    version=phase.VERSION,
    field="mpb_image",
    summary="crystal phase probabilities from diffraction frames (the talk's CNN)",
    task=phase.PhaseTask,
    stateless=True,
    shape=phase.FIELD_SHAPE,
    preprocess=phase.preprocess,
)
NAME = PLUGIN.name
FIELD = PLUGIN.field


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``mpb_image`` frames; the model is the shipped ``phase_cnn`` weights."""
    probabilities = {f"p_{name}": "" for name in phase.class_names()}
    # the class index and the probabilities are dimensionless; saliency is relative
    return PLUGIN.describe({"phase": "", "confidence": "", **probabilities, "saliency": "a.u."})


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) and check the model before the first event."""
    PLUGIN.start_run(run)


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Classify every frame of the batch."""
    done = PLUGIN.infer(run, batch)
    if done is None:
        return None
    task = done.task
    probabilities = task.probabilities(done.output, done.extras)
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
            [
                gradient_saliency(done.model, done.x[i : i + 1], int(c))[0]
                for i, c in enumerate(winner)
            ]
        )
        full = np.repeat(bands, phase.ROW_BAND, axis=1)
        results.arrays["saliency"] = np.pad(
            full, ((0, 0), (0, phase.FIELD_SHAPE[0] - full.shape[1]), (0, 0)), mode="edge"
        )
        results.dims["saliency"] = ("row", "column")
    return results
