"""What every model plugin shares at inference: its declaration, input checks, saliency.

A plugin that runs a shipped network declares a :class:`ModelPlugin` (name,
field, shape, preprocessing, task) and keeps only what is its own: turning the
network's outputs into results. Loading, checking and resampling the input,
preprocessing and the forward pass (through :mod:`smartlab_plugins.models.runtime`,
which owns the device and the precision) are here, once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartlab_plugins.hookspecs import DataSpec, EventBatch, PluginInfo, RunContext
from smartlab_plugins.models import ood, runtime
from smartlab_plugins.models.store import LoadedModel, model_info, shared_model

#: The units of the out-of-distribution results every model plugin publishes (:func:`ood_flags`).
OOD_UNITS = {"ood_score": "", "in_distribution": ""}


def log_once(
    logger: logging.Logger,
    run: RunContext,
    plugin: str,
    key: str,
    level: int,
    message: str,
    *args: object,
) -> None:
    """Log ``message`` (%-style, with ``args``) the first time ``key`` comes up in this run.

    Prefixed with the run's short uid and ``plugin``; what a plugin says about a
    whole run (an assumed grid or geometry, events flagged) is said once, not per batch.
    """
    notes = run.state.setdefault("noted", set())
    if key not in notes:
        notes.add(key)
        logger.log(level, "run %s plugin %s: " + message, run.uid[:8], plugin, *args)


def ood_flags(
    run: RunContext,
    plugin: str,
    model: LoadedModel,
    x: np.ndarray,
    logger: logging.Logger,
    seq_num: np.ndarray,
    features: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``ood_score`` and ``in_distribution`` per event for preprocessed inputs ``x``.

    ``features``: those of ``x``, when the plugin's own forward pass gave them
    (:meth:`~smartlab_plugins.models.store.LoadedModel.run_with_features`).

    See :mod:`smartlab_plugins.models.ood`. The first event of a run flagged out
    of distribution is logged as a warning (once per run); a model whose card
    has no calibration publishes neither, and says so once per run.
    """
    if model.ood is None:
        log_once(
            logger,
            run,
            plugin,
            "no_ood",
            logging.WARNING,
            "model %s %s has no out-of-distribution calibration: ood_score and "
            "in_distribution are not published (run `smartlab calibrate-ood %s`)",
            model.card.name,
            model.card.version,
            model.card.name,
        )
        return {}
    flags = model.ood.flags(features if features is not None else ood.features(model.net, x))
    flagged = np.flatnonzero(flags["in_distribution"] == 0)
    if flagged.size:
        first = flagged[0]
        log_once(
            logger,
            run,
            plugin,
            "out_of_distribution",
            logging.WARNING,
            "event %d looks unlike the model's training data (ood_score %.3g > %.3g): its "
            "results, and those of later events flagged in_distribution=0, may be wrong "
            "whatever their stated uncertainty",
            int(seq_num[first]),
            float(flags["ood_score"][first]),
            model.ood.threshold,
        )
    return flags


def describe_model_plugin(
    name: str, version: str, field: str, summary: str, stateless: bool = False
) -> PluginInfo:
    """The description of a plugin that runs shipped model ``name`` on one 2-D ``field``.

    A network is faster on a GPU, so every such plugin asks for one on a compute
    engine; ``stateless`` (see :class:`PluginInfo`) is the plugin's to declare.
    """
    return PluginInfo(
        name=name,
        version=version,
        accepts=DataSpec(ndims=(2,), fields=(field,)),
        summary=summary,
        model=model_info(name),
        device=runtime.pick_device().type,
        stateless=stateless,
        gpu=True,
    )


@dataclass(frozen=True)
class Inference:
    """One batch through a plugin's network: the model, the run's task, inputs and raw outputs."""

    model: LoadedModel
    task: Any
    x: np.ndarray  # the preprocessed batch, as the network took it
    output: torch.Tensor  # float32, on the CPU
    #: the out-of-distribution features of ``x`` from the same pass, when it gave them
    features: dict[str, np.ndarray] | None = None

    @property
    def extras(self) -> dict[str, Any]:
        """The model card's calibration (temperature, scale factors, thresholds)."""
        return self.model.card.extras


@dataclass(frozen=True)
class ModelPlugin:
    """What a plugin running shipped network ``name`` on 2-D ``field`` declares; the rest is shared.

    ``task`` makes the object that interprets the outputs (one per run, in
    ``run.state["task"]``); ``shape`` and ``preprocess`` say what the field
    must hold and how it becomes the network's input. A plugin that feeds its
    network itself (the U-Net's tiling) leaves them out and uses only
    :meth:`describe` and :meth:`start_run`.
    """

    name: str
    version: str
    field: str
    summary: str
    task: Callable[[], Any]
    stateless: bool = False
    shape: tuple[int, ...] | None = None
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None

    def describe(self, units: Mapping[str, str]) -> PluginInfo:
        """The plugin's description, with the unit of each result it publishes."""
        info = describe_model_plugin(
            self.name, self.version, self.field, self.summary, self.stateless
        )
        return dataclasses.replace(info, units=dict(units))

    def start_run(self, run: RunContext) -> None:
        """Load (once per process) and check the model before the run's first event."""
        run.state["model"] = shared_model(self.name)
        run.state["task"] = self.task()

    def infer(self, run: RunContext, batch: EventBatch) -> Inference | None:
        """The batch's field checked, preprocessed and through the network; None if absent."""
        if self.shape is None or self.preprocess is None:
            raise TypeError(
                f"{self.name}: infer() needs the plugin to declare shape and preprocess"
            )
        values = model_input(run, batch, self.name, self.field, self.shape)
        if values is None:
            return None
        model: LoadedModel = run.state["model"]
        x = self.preprocess(values)
        output, features = model.run_with_features(x)
        return Inference(model, run.state["task"], x, output, features)


def model_input(
    run: RunContext, batch: EventBatch, name: str, field: str, shape: tuple[int, ...]
) -> np.ndarray | None:
    """The batch's ``field`` checked (resampled, if the run asks) to ``shape``; None if absent."""
    if field not in batch.data:
        return None
    return checked_field(name, batch, field, shape, bool(run.options.get("resample", False)))


def checked_field(
    plugin: str, batch: EventBatch, field: str, shape: tuple[int, ...], resample: bool
) -> np.ndarray:
    """``batch.data[field]`` with per-event shape ``shape``, resampled if allowed.

    Raises ValueError naming the plugin, the field, the expected and the actual
    shape, and the option that would resample a compatible grid.
    """
    values = np.asarray(batch.data[field])
    actual = values.shape[1:]
    if actual == tuple(shape):
        return values
    if resample and len(actual) == len(shape):
        return resampled(values, shape)
    raise ValueError(
        f"{plugin}: expected {'x'.join(map(str, shape))} data in field {field!r}, got "
        f"{'x'.join(map(str, actual))} (events {int(batch.seq_num[0])}-{int(batch.seq_num[-1])}); "
        f'set smartlab={{"options": {{"{plugin}": {{"resample": True}}}}}} to interpolate a '
        "compatible grid"
    )


def resampled(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each event's array linearly interpolated onto ``shape`` (same extent, other binning)."""
    from scipy.ndimage import zoom

    factors = [target / source for target, source in zip(shape, values.shape[1:], strict=True)]
    return np.stack([zoom(v.astype(np.float32), factors, order=1) for v in values])


def gradient_saliency(model: LoadedModel, x: np.ndarray, output_index: int) -> np.ndarray:
    """|d output[output_index] / d input| per input pixel, scaled to a maximum of 1 per event.

    Outside autocast, so in float32 on every device: the map ranks pixels by
    gradients that bfloat16 would round together.
    """
    inputs = runtime.to_device(x, model.device).requires_grad_(True)
    with torch.enable_grad():
        model.net(inputs)[:, output_index].sum().backward()
    saliency = inputs.grad.abs().amax(dim=1).cpu().numpy()
    peak = saliency.reshape(len(saliency), -1).max(axis=1)[:, None, None]
    return saliency / np.where(peak > 0, peak, 1.0)
