"""``spinwave_cnn``: exchange constants J1, J2, D (meV) with uncertainties, per INS map.

Reads the ``ins_sqw`` field (S(|Q|, E) counts maps, as the simulated chopper
spectrometer records them) and publishes, per event, ``j1``, ``j2``, ``d`` and
their standard deviations ``j1_std``, ``j2_std``, ``d_std`` in meV, and
``ood_score`` and ``in_distribution`` (0: the map looks unlike the training
data, so the estimates and their uncertainties may be wrong; see
:mod:`smartlab_plugins.models.ood`).
The model, its training and its test-set accuracy are in its model card
(``smartlab_plugins/models/weights/spinwave_cnn.json``).

Axes. The model was trained on 96 x 160 maps: |Q| 0.3 to 3.0 1/angstrom and
E 0.2 to 16.2 meV in equal bins (the card's generator config). When the
field's data key declares its axes (``dims`` ["q", "energy"] and ``coords``
with bin centres and units, as the spectrometer's does), the map is moved onto
that grid by its physical coordinates, whatever its shape: counts divided by
the bin area, interpolated linearly in |Q| and E at the training bin centres,
times the training bin area (:func:`~smartlab_plugins.models.spinwave.plan_regrid`).
A map whose declared bins do not reach every training bin centre is refused
for that event, with an error naming the field, the declared and the needed
range. A map that covers the range only just (a training centre beyond its
outer bin centres) or whose bins are more than 1% wider or narrower than the
training bins is analysed and flagged ``outside_training = 1``, with a warning
once per run. Without ``coords`` the map is taken to be on the training grid,
which the plugin logs once per run.

Options (per run, ``RE(plan, smartlab={"options": {"spinwave_cnn": {...}}})``):
``resample: True`` stretches a map of another shape that declares no axes onto
96 x 160, assuming it spans the same |Q| and E ranges (a warning once per run
says so; a map on another range comes out biased, e.g. J1 by ~8% for E up to
20.2 meV); maps with declared axes do not need it.
``saliency: True`` also publishes ``saliency`` (96 x 160), the gradient
magnitude of the predicted J1 with respect to the map: where the answer came from.

The model was trained at one incident energy and temperature (see its card).
Events measured away from them (Ei off by more than 5%, T by more than 50%)
get ``outside_training = 1`` and a warning once per run: their estimates drift.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext, hookimpl
from smartlab_plugins.models import spinwave
from smartlab_plugins.models.inference import (
    OOD_UNITS,
    ModelPlugin,
    gradient_saliency,
    log_once,
    ood_flags,
)

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
    **OOD_UNITS,
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


def _grid_range(axes: dict[str, np.ndarray]) -> str:
    """The training grid's extent, for log lines."""
    q, e = (np.asarray(axes[d]) for d in spinwave.AXES)
    dq, de = q[1] - q[0], e[1] - e[0]
    return (
        f"{len(q)} x {len(e)} bins, |Q| {q[0] - dq / 2:.4g} to {q[-1] + dq / 2:.4g} 1/angstrom, "
        f"E {e[0] - de / 2:.4g} to {e[-1] + de / 2:.4g} meV"
    )


def on_training_grid(
    run: RunContext,
    batch: EventBatch,
    plugin: str = NAME,
    config: dict[str, Any] | None = None,
) -> tuple[EventBatch, bool]:
    """The batch with its map moved onto the training grid by its declared axes.

    Returns the batch (unchanged when the field declares no ``coords`` or
    already is on the training grid) and whether the declared grid covers the
    training grid only partially. Raises ValueError when the declared axes are
    unusable or do not cover the training range: the worker then records the
    error against each event of the batch. ``plugin`` names the plugin in
    messages; ``config`` is the generator config of its training data (default:
    this plugin's model card's; ``spinwave_baselines`` passes the CNN's, the same
    simulated instrument).
    """
    if FIELD not in batch.data:
        return batch, False
    values = np.asarray(batch.data[FIELD])
    data_key = run.descriptors.get(batch.stream, {}).get("data_keys", {}).get(FIELD, {})
    if config is None:
        config = run.state["model"].card.data.get("generator_config", {})
    target = run.state.get("training_axes")
    if target is None:
        target = run.state["training_axes"] = spinwave.training_axes(config)
    declared = spinwave.declared_axes(dict(data_key), FIELD, values.shape[1:])
    if declared is None:
        if values.shape[1:] == spinwave.FIELD_SHAPE:
            log_once(
                logger,
                run,
                plugin,
                "no_axes",
                logging.INFO,
                "field %r declares no axes (coords); assuming the training grid (%s)",
                FIELD,
                _grid_range(target),
            )
        elif run.options.get("resample"):
            log_once(
                logger,
                run,
                plugin,
                "resample_without_axes",
                logging.WARNING,
                "field %r of shape %s declares no axes (coords); resample stretches it onto %s "
                "assuming it spans the same |Q| and E ranges; on another range the estimates "
                "are biased. Declare dims and coords in its data key to map it by coordinates",
                FIELD,
                "x".join(map(str, values.shape[1:])),
                _grid_range(target),
            )
        return batch, False
    axes, dims = declared
    plan = spinwave.plan_regrid(axes, dims, target, FIELD, plugin)
    if plan.partial:
        log_once(
            logger,
            run,
            plugin,
            "partial_axes",
            logging.WARNING,
            "field %r covers the training grid only partly (%s); its events are flagged "
            "outside_training=1 and their estimates may be biased",
            FIELD,
            "; ".join(plan.partial),
        )
    if plan.identity and dims == spinwave.AXES:
        return batch, bool(plan.partial)
    data = {**batch.data, FIELD: plan.apply(values)}
    moved = EventBatch(batch.stream, batch.seq_num, batch.time, data, batch.context)
    return moved, bool(plan.partial)


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Predict the exchange constants of every map in the batch."""
    batch, partial = on_training_grid(run, batch)
    done = PLUGIN.infer(run, batch)
    if done is None:
        return None
    mean, std = done.task.interpret(done.output, done.extras)
    config = done.model.card.data["generator_config"]
    conditions = spinwave.outside_training(dict(batch.context), config, len(batch))
    flagged = conditions | partial
    if conditions.any():
        log_once(
            logger,
            run,
            NAME,
            "outside_training",
            logging.WARNING,
            "events measured away from the model's training conditions (Ei %s meV, T %s K); "
            "their estimates are flagged outside_training=1 and may be biased",
            config["ei"],
            config["temperature"],
        )
    results = Results(
        scalars={
            **{p: mean[:, i] for i, p in enumerate(spinwave.PARAMETERS)},
            **{f"{p}_std": std[:, i] for i, p in enumerate(spinwave.PARAMETERS)},
            "outside_training": flagged.astype(np.int8),
            **ood_flags(run, NAME, done.model, done.x, logger, batch.seq_num, done.features),
        }
    )
    if run.options.get("saliency"):
        saliency = gradient_saliency(done.model, done.x, output_index=0)
        results.arrays["saliency"] = np.repeat(np.repeat(saliency, 2, axis=1), 2, axis=2)
        results.dims["saliency"] = ("q", "energy")
    return results
