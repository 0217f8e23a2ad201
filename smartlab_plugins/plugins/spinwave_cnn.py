"""``spinwave_cnn``: exchange constants J1, J2, D (meV) with uncertainties, per INS map.

Reads the ``ins_sqw`` field (96 x 160 S(|Q|, E) counts maps, as the simulated
chopper spectrometer records them) and publishes, per event, ``j1``, ``j2``,
``d`` and their standard deviations ``j1_std``, ``j2_std``, ``d_std`` in meV.
The model, its training and its test-set accuracy are in its model card
(``smartlab_plugins/models/weights/spinwave_cnn.json``).

Options (per run, ``RE(plan, smartlab={"options": {"spinwave_cnn": {...}}})``):
``resample: True`` interpolates a map on a different grid onto 96 x 160;
``saliency: True`` also publishes ``saliency`` (96 x 160), the gradient
magnitude of the predicted J1 with respect to the map: where the answer came from.

The model was trained at one incident energy and temperature (see its card).
Events measured away from them (Ei off by more than 5%, T by more than 50%)
get ``outside_training = 1`` and a warning once per run: their estimates drift.
"""

from __future__ import annotations

import logging

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import spinwave
from smartlab_plugins.models.inference import ModelPlugin, gradient_saliency

logger = logging.getLogger(__name__)
PLUGIN = ModelPlugin(
    name=spinwave.NAME,
    version=spinwave.VERSION,
    field="ins_sqw",
    summary="J1, J2, D (meV) with uncertainties from S(|Q|,E) maps (CNN, Laplace head)",
    task=spinwave.SpinWaveTask,
    stateless=True,
    shape=spinwave.FIELD_SHAPE,
    preprocess=spinwave.preprocess,
)
NAME = PLUGIN.name
FIELD = PLUGIN.field
UNITS = {
    **{name: "meV" for p in spinwave.PARAMETERS for name in (p, f"{p}_std")},
    "outside_training": "",
    "saliency": "a.u.",
}


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``ins_sqw`` maps; the model is the shipped ``spinwave_cnn`` weights."""
    return PLUGIN.describe(UNITS)


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) and check the model before the first event."""
    PLUGIN.start_run(run)


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Predict the exchange constants of every map in the batch."""
    done = PLUGIN.infer(run, batch)
    if done is None:
        return None
    mean, std = done.task.interpret(done.output, done.extras)
    config = done.model.card.data["generator_config"]
    flagged = spinwave.outside_training(dict(batch.context), config, len(batch))
    if flagged.any() and not run.state.get("warned"):
        run.state["warned"] = True
        logger.warning(
            "run %s plugin %s: events measured away from the model's training conditions "
            "(Ei %s meV, T %s K); their estimates are flagged outside_training=1 and may be biased",
            run.uid[:8],
            NAME,
            config["ei"],
            config["temperature"],
        )
    results = Results(
        scalars={
            **{p: mean[:, i] for i, p in enumerate(spinwave.PARAMETERS)},
            **{f"{p}_std": std[:, i] for i, p in enumerate(spinwave.PARAMETERS)},
            "outside_training": flagged.astype(np.int8),
        }
    )
    if run.options.get("saliency"):
        saliency = gradient_saliency(done.model, done.x, output_index=0)
        results.arrays["saliency"] = np.repeat(np.repeat(saliency, 2, axis=1), 2, axis=2)
        results.dims["saliency"] = ("q", "energy")
    return results
