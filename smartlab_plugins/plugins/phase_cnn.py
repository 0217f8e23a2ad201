"""``phase_cnn``: the crystal phase of each diffraction frame, with calibrated probabilities.

Reads the ``mpb_image`` field (area-detector frames of a PZT-like perovskite
across its morphotropic phase boundary and Curie line) and publishes, per
event, ``phase`` (the class index), ``phase_name``, ``confidence`` and one
probability per class (``p_rhombohedral``, ``p_monoclinic``, ``p_tetragonal``,
``p_cubic``, ``p_mixture``), temperature-scaled as the model card records,
and ``ood_score`` and ``in_distribution`` (0: the frame looks unlike the
training data; see :mod:`smartlab_plugins.models.ood`).
Accuracy against the distance to the phase boundaries and the calibration
error are in the card (``smartlab_plugins/models/weights/phase_cnn.json``).

Geometry. When the field's data key declares ``geometry`` (pyFAI PONI
parameters: ``dist``, ``poni1``, ``poni2``, ``rot1``, ``rot2``, ``rot3``,
``wavelength``, ``pixel1``, ``pixel2``, in m and rad, as the simulated detector
declares them), each frame is integrated by pyFAI into (chi, q) bins for that
geometry, whatever the detector's shape; the card's scope gives the distances
and arm angles the training covered. A geometry missing a parameter, or with
a non-number, is refused per event with an error naming it. Without
``geometry``, frames must be the simulated detector's 97 x 243 and its nominal
geometry is assumed, which the plugin logs once per run.

Options (per run, ``RE(plan, smartlab={"options": {"phase_cnn": {...}}})``):
``saliency: True`` also publishes ``saliency`` (12 x 336, dims chi and q): the
gradient magnitude of the winning class's logit over the integrated frame,
i.e. which rings decided it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import phase
from smartlab_plugins.models.inference import (
    OOD_UNITS,
    ModelPlugin,
    gradient_saliency,
    log_once,
    ood_flags,
)

logger = logging.getLogger(__name__)
PLUGIN = ModelPlugin(
    name=phase.NAME,
    version=phase.VERSION,
    field="mpb_image",
    summary="crystal phase probabilities from diffraction frames (the talk's CNN, via pyFAI)",
    task=phase.PhaseTask,
    stateless=True,
)
NAME = PLUGIN.name
FIELD = PLUGIN.field


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``mpb_image`` frames; the model is the shipped ``phase_cnn`` weights."""
    probabilities = {f"p_{name}": "" for name in phase.class_names()}
    # the class index and the probabilities are dimensionless; saliency is relative
    return PLUGIN.describe(
        {"phase": "", "confidence": "", **probabilities, **OOD_UNITS, "saliency": "a.u."}
    )


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) and check the model before the first event."""
    PLUGIN.start_run(run)


def network_input(
    run: RunContext, batch: EventBatch, plugin: str, config: Mapping[str, Any]
) -> np.ndarray | None:
    """The batch's frames integrated for their declared (or the nominal) geometry; None if absent.

    ``config`` is the generator config the model was trained on (its nominal
    geometry is assumed when none is declared). Shared with ``phase_baselines``.
    Raises ValueError naming the field and the
    problem; the worker records it against each event of the batch.
    """
    if FIELD not in batch.data:
        return None
    data_key = run.descriptors.get(batch.stream, {}).get("data_keys", {}).get(FIELD, {})
    x, declared = phase.frames_to_input(batch.data[FIELD], data_key, config, FIELD)
    if not declared:
        log_once(
            logger,
            run,
            plugin,
            "no_geometry",
            logging.INFO,
            "field %r declares no geometry; assuming the simulated detector's (%s mm, arm %s deg)",
            FIELD,
            config.get("distance"),
            config.get("arm_two_theta"),
        )
    return x


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Classify every frame of the batch."""
    config = run.state["model"].card.data.get("generator_config", {})
    x = network_input(run, batch, NAME, config)
    if x is None:
        return None
    model = run.state["model"]
    task = run.state["task"]
    output, features = model.run_with_features(x)  # one forward pass for both
    probabilities = task.probabilities(output, model.card.extras)
    winner = probabilities.argmax(axis=1)
    results = Results(
        scalars={
            "phase": winner,
            "phase_name": np.array(task.outputs, dtype=object)[winner],
            "confidence": probabilities.max(axis=1),
            **{f"p_{name}": probabilities[:, i] for i, name in enumerate(task.outputs)},
            **ood_flags(run, NAME, model, x, logger, batch.seq_num, features),
        }
    )
    if run.options.get("saliency"):
        results.arrays["saliency"] = np.stack(
            [gradient_saliency(model, x[i : i + 1], int(c))[0] for i, c in enumerate(winner)]
        )
        results.dims["saliency"] = ("chi", "q")
    return results
