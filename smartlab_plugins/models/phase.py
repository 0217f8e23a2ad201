"""``phase_cnn``: crystal phase near a morphotropic phase boundary from a diffraction frame.

The network is the talk's reference design (3x3 kernels, 32 then 64 feature
maps with pooling, dense 16 then 8, softmax over the phases: rhombohedral,
monoclinic, tetragonal, mixture). Its probabilities are calibrated by
temperature scaling on the validation split; the test split's expected
calibration error (ECE) and its accuracy against the distance to the phase
boundary are in the model card. "Away from the boundary" means
|x - x_MPB(T)| >= 0.05 in Ti fraction.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models.preprocessing import log_binned_zscore
from smartlab_plugins.models.training import Split

NAME = "phase_cnn"
VERSION = "1.0.0"
FIELD_SHAPE = (97, 243)
ROW_BAND = 8
AWAY_FROM_BOUNDARY = 0.05
DISTANCE_BINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 1.0)
NEAR_BOUNDARY_FRACTION = 0.5


def class_names() -> list[str]:
    from smartlab_plugins.devices.mpb import PHASE_NAMES

    return list(PHASE_NAMES)


def preprocess(frames: np.ndarray) -> np.ndarray:
    """Frames (n, 97, 243) to network input (n, 1, 12, 243): log1p, 8-row band means, z-score.

    The 97th row fills no band and is dropped.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != FIELD_SHAPE:
        raise ValueError(f"expected frames of shape (n, 97, 243), got {frames.shape}")
    return log_binned_zscore(frames, (ROW_BAND, 1))


def training_config():
    """The generator config of the training set: half the samples near the boundary."""
    from smartlab_plugins.devices.mpb import MPBConfig

    return replace(MPBConfig(), near_boundary_fraction=NEAR_BOUNDARY_FRACTION)


class PhaseTask:
    """Training and scoring of ``phase_cnn`` (see :mod:`smartlab_plugins.models.training`)."""

    name = NAME
    version = VERSION
    kind = "classification"
    case = "mpb"
    input_field_shape = FIELD_SHAPE

    def __init__(self) -> None:
        self.outputs = class_names()

    def generator_config(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(training_config()).items()
        }

    def make_data(self, n: int, seed: int) -> Split:
        from smartlab_plugins.cases import simulate_case

        return self.from_set(simulate_case("mpb", n, seed=seed, config=training_config()))

    def from_set(self, made: SimulatedSet) -> Split:
        """Network inputs, class labels and distances to the boundary of a simulated MPB set."""
        return Split(
            preprocess(made.inputs["mpb_image"]),
            made.labels["phase"].astype(np.int64),
            {"boundary_distance": made.labels["boundary_distance"].astype(np.float32)},
        )

    def architecture(self) -> dict[str, Any]:
        return {"class": "PhaseNet", "params": {"n_classes": len(self.outputs)}}

    def preprocessing(self) -> dict[str, Any]:
        return {
            "steps": [
                "log1p(counts)",
                f"mean over {ROW_BAND}-row bands -> 12x243",
                "z-score per frame",
            ],
            "classes": self.outputs,
            "away_from_boundary": f"|x - x_MPB(T)| >= {AWAY_FROM_BOUNDARY}",
        }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def selection_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def calibrate(self, net: torch.nn.Module, validation: Split) -> dict[str, Any]:
        """Temperature scaling: one scalar T minimising the validation NLL of logits / T."""
        from smartlab_plugins.models.training import predict

        logits, target = predict(net, validation.x), torch.as_tensor(validation.y)
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / torch.exp(log_t), target)
            loss.backward()
            return loss

        optimizer.step(closure)
        return {"temperature": float(torch.exp(log_t).detach())}

    def probabilities(self, output: torch.Tensor, calibration: dict | None = None) -> np.ndarray:
        temperature = (calibration or {}).get("temperature", 1.0)
        return torch.softmax(output / temperature, dim=1).numpy()

    def evaluate(
        self, output: torch.Tensor, split: Split, calibration: dict | None = None
    ) -> dict[str, Any]:
        probabilities = self.probabilities(output, calibration)
        predicted = probabilities.argmax(axis=1)
        correct = predicted == split.y
        distance = split.extra["boundary_distance"]
        away = distance >= AWAY_FROM_BOUNDARY
        curve = []
        for low, high in pairwise(DISTANCE_BINS):
            inside = (distance >= low) & (distance < high)
            if inside.any():
                curve.append(
                    {
                        "distance": [low, high],
                        "n": int(inside.sum()),
                        "accuracy": float(correct[inside].mean()),
                    }
                )
        confusion = np.zeros((len(self.outputs), len(self.outputs)), dtype=int)
        np.add.at(confusion, (split.y, predicted), 1)
        return {
            "accuracy": float(correct.mean()),
            "accuracy_away_from_boundary": float(correct[away].mean()) if away.any() else None,
            "n_away_from_boundary": int(away.sum()),
            "expected_calibration_error": expected_calibration_error(probabilities, split.y),
            "accuracy_by_distance": curve,
            "confusion": {
                "classes": self.outputs,
                "rows_true_columns_predicted": confusion.tolist(),
            },
            "n": len(split.y),
        }


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy, over ``bins`` bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)
