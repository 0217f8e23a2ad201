"""Shipped models: find a model's card and weights, check them, and load them safely.

Weights live in the package (``smartlab_plugins/models/weights/<name>.pt``)
beside their model card (``<name>.json``). Loading verifies the SHA-256 in the
card first, then reads the file with ``torch.load(weights_only=True)``, which
refuses pickled code; a mismatch raises :class:`ModelIntegrityError`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smartlab_plugins.hookspecs import ModelInfo
from smartlab_plugins.models import ood, runtime
from smartlab_plugins.models.cards import ModelCard, ModelIntegrityError
from smartlab_plugins.models.nets import build
from smartlab_plugins.models.ood import OODModel, load_for

__all__ = [
    "LoadedModel",
    "ModelIntegrityError",
    "card_of",
    "load_model",
    "model_info",
    "shared_model",
    "shipped_dir",
]


def shipped_dir() -> Path:
    """The package folder holding the shipped weights and cards."""
    return Path(str(files("smartlab_plugins.models") / "weights"))


def model_dir(name: str) -> Path:
    """Where model ``name`` is loaded from: ``SMARTLAB_MODEL_DIR`` if it holds one, else shipped.

    This is how plugins pick up a model made by ``smartlab finetune`` or
    ``smartlab train``: its card and weights are checked the same way.
    """
    override = os.environ.get("SMARTLAB_MODEL_DIR")
    if override and (Path(override) / f"{name}.json").is_file():
        return Path(override)
    return shipped_dir()


def model_info(name: str) -> ModelInfo | None:
    """The shipped model's name, hash and version for a plugin's description, or None."""
    card = card_of(name)
    return ModelInfo(card.name, card.sha256, card.version) if card else None


def card_of(name: str, directory: Path | None = None) -> ModelCard | None:
    """The model card of ``name``, or None if no such model is shipped."""
    path = Path(directory or model_dir(name)) / f"{name}.json"
    return ModelCard.load(path) if path.is_file() else None


@dataclass
class LoadedModel:
    """A checked, ready network with its card, on the device it will run on."""

    card: ModelCard
    net: nn.Module
    device: torch.device
    #: the calibrated out-of-distribution statistics (:mod:`~smartlab_plugins.models.ood`),
    #: None for a card that has none
    ood: OODModel | None = None

    def run(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw outputs for preprocessed inputs ``x``, as a float32 CPU tensor.

        Through the inference runtime (:func:`~smartlab_plugins.models.runtime.forward`):
        on CUDA a pinned, non-blocking copy and bfloat16 autocast; on the CPU the
        network's own float32 forward pass.
        """
        return runtime.forward(self.net, x, self.device)

    def run_with_features(
        self, x: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, np.ndarray] | None]:
        """:meth:`run`, and the out-of-distribution features of ``x`` from the same pass.

        On the CPU the one forward pass gives both (the features are those the
        calibration used). Elsewhere (bfloat16 autocast on CUDA), or without a
        calibration, the features are None: :func:`~smartlab_plugins.models.inference.ood_flags`
        then computes them in float32 itself.
        """
        if self.ood is None or self.device.type != "cpu":
            return self.run(x), None
        feats, outputs = ood.features_and_outputs(self.net, x)
        return outputs, feats


def load_model(
    name: str,
    directory: Path | None = None,
    device: str | torch.device | None = None,
    with_ood: bool = True,
) -> LoadedModel:
    """Load model ``name``, refusing weights whose hash does not match the card.

    ``device`` as :func:`~smartlab_plugins.models.runtime.pick_device` takes it
    (None: a GPU if one is visible, else the CPU). ``with_ood=False`` leaves
    out the out-of-distribution statistics (to calibrate them anew).
    """
    directory = Path(directory or model_dir(name))
    card = card_of(name, directory)
    if card is None:
        out = "" if directory == shipped_dir() else f" --out {directory}"
        raise ModelIntegrityError(
            f"{name}: no model card {name}.json in {directory}; "
            f"train one with `smartlab train {name}{out}`"
        )
    return _load(card, directory, device, with_ood)


def _load(
    card: ModelCard, directory: Path, device: str | torch.device | None, with_ood: bool = True
) -> LoadedModel:
    path = card.verify(directory)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build(card.architecture)
    net.load_state_dict(state)
    target = runtime.pick_device(device)
    net.to(target).eval()
    ood = load_for(card.extras, directory) if with_ood else None
    return LoadedModel(card, net, target, ood)


@functools.lru_cache(maxsize=8)
def shared_model(name: str) -> LoadedModel:
    """The shipped model ``name``, loaded once per process and shared by all runs."""
    return load_model(name)
