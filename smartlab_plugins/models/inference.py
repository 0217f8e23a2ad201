"""Helpers every model plugin needs at inference: input checks, resampling, saliency."""

from __future__ import annotations

import numpy as np
import torch

from smartlab_plugins.hookspecs import DataSpec, EventBatch, PluginInfo, RunContext
from smartlab_plugins.models.store import LoadedModel, model_info, shared_model


def device_name() -> str:
    """Where models run: ``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        device=device_name(),
        stateless=stateless,
        gpu=True,
    )


def start_model_run(run: RunContext, name: str, task: object) -> None:
    """Load (once per process) and check model ``name`` before the run's first event."""
    run.state["model"] = shared_model(name)
    run.state["task"] = task


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
    """|d output[output_index] / d input| per input pixel, scaled to a maximum of 1 per event."""
    inputs = torch.as_tensor(x, device=model.device).requires_grad_(True)
    with torch.enable_grad():
        model.net(inputs)[:, output_index].sum().backward()
    saliency = inputs.grad.abs().amax(dim=1).cpu().numpy()
    peak = saliency.reshape(len(saliency), -1).max(axis=1)[:, None, None]
    return saliency / np.where(peak > 0, peak, 1.0)
