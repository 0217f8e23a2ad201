"""The one inference runtime: where networks run, how a batch gets there, in what precision.

Every shipped network runs through here: the live plugins (through
:meth:`~smartlab_plugins.models.store.LoadedModel.run`, the U-Net's
:func:`~smartlab_plugins.models.segmentation.segment` and the LSTM's
:func:`~smartlab_plugins.models.transition.step_frame`), training's
validation and test passes (:func:`~smartlab_plugins.models.training.predict`)
and the benchmarks. So a GPU run has one path to verify:

* the device is CUDA when a GPU is visible, else the CPU, unless one is named
  (:func:`pick_device`);
* a batch goes to CUDA from pinned host memory without blocking (:func:`to_device`);
* on CUDA the forward pass runs under bfloat16 autocast, with the parts that
  must stay in float32 (the LSTM's recurrence) inside :func:`full_precision`;
  on the CPU it runs in plain float32, so CPU results are the network's own
  forward pass, bit for bit (:func:`autocast`);
* outputs come back as float32 CPU tensors (:func:`forward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

#: The reduced precision of a forward pass on CUDA.
CUDA_DTYPE = torch.bfloat16


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``.

    A CUDA device named where torch sees none is refused here, with the reason,
    rather than when the first tensor is moved.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(chosen)!r} was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'cpu'"
        )
    return chosen


def device_of(net: nn.Module) -> torch.device:
    """The device ``net``'s parameters are on."""
    return next(net.parameters()).device


def to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``; to CUDA from pinned memory, without blocking.

    The copy is ordered on the current CUDA stream, so the forward pass that
    follows sees it complete; on the CPU ``x`` is not copied at all.
    """
    batch = torch.as_tensor(x)
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA; on the CPU nothing, so a forward pass stays in float32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=CUDA_DTYPE)
    return contextlib.nullcontext()


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast off inside a forward pass, for what must run in float32 (a carried state)."""
    return torch.autocast(device_type=device.type, enabled=False)


@contextlib.contextmanager
def inference(device: torch.device) -> Iterator[None]:
    """No autograd, and the precision of :func:`autocast`: how every forward pass runs.

    ``torch.no_grad`` rather than ``inference_mode``: outputs may go on into
    autograd (a temperature fitted to the logits), which inference tensors refuse.
    """
    with torch.no_grad(), autocast(device):
        yield


def forward(
    net: nn.Module,
    x: np.ndarray | torch.Tensor,
    device: torch.device | None = None,
    *,
    on_device: bool = False,
) -> torch.Tensor:
    """``net(x)`` on ``device`` (default: where ``net`` is), as float32 on the CPU.

    ``on_device=True`` leaves the float32 outputs where they were computed, for
    callers that reduce them there before copying (the U-Net's phase maps).
    On the CPU this is exactly ``net(torch.as_tensor(x))`` under ``no_grad``.
    """
    if device is None:
        device = device_of(net)
    with inference(device):
        output = net(to_device(x, device)).float()
    return output if on_device else output.cpu()
