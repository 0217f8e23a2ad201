"""``phase_cnn``: crystal phase near a morphotropic phase boundary from a diffraction frame.

The network is the talk's reference design (3x3 kernels, 32 then 64 feature
maps with pooling, dense 16 then 8, softmax over the phases: rhombohedral,
monoclinic, tetragonal, cubic, mixture). It reads the frame as pyFAI integrates
it for the detector's declared geometry (:mod:`smartlab_plugins.models.caking`):
a (chi, q) cake, so the detector distance, beam centre, pixel size and
wavelength drop out. Its probabilities are calibrated by temperature scaling on
the validation split; the test split's expected calibration error (ECE) and its
accuracy against the distance to the phase boundaries are in the model card.
"Away from the boundaries" means at least ``AWAY_COMPOSITION`` in Ti fraction
from a composition where the label changes and ``AWAY_CURIE`` K from the Curie
line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models import caking
from smartlab_plugins.models.training import Split

NAME = "phase_cnn"
VERSION = "2.0.0"
FIELD_SHAPE = (97, 243)  # the simulated detector's; any shape works with a declared geometry
INPUT_SHAPE = caking.CAKE_SHAPE
AWAY_COMPOSITION = 0.01  # Ti fraction from the nearest label change below T_C
AWAY_CURIE = 50.0  # K from the Curie line
COMPOSITION_BINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0, np.inf)
CURIE_BINS = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, np.inf)
NEAR_BOUNDARY_FRACTION = 0.45
NEAR_CURIE_FRACTION = 0.2
DISTANCE_RANGE = (115.0, 140.0)  # mm, detector distances the training covered
ARM_RANGE = (51.0, 55.0)  # deg, detector arm angles the training covered


def class_names() -> list[str]:
    from smartlab_plugins.devices.mpb import PHASE_NAMES

    return list(PHASE_NAMES)


def normalised_cakes(cakes: np.ndarray) -> np.ndarray:
    """Cakes (n, 12, 336) to network input (n, 1, 12, 336): log1p, z-score, empty bins 0.

    The z-score runs over each frame's covered bins; a frame with no finite
    counts, or none that vary, is refused (ValueError naming the frame).
    """
    logged = np.log1p(np.clip(cakes, 0.0, None))
    finite = np.isfinite(logged)
    out = np.zeros(logged.shape, dtype=np.float32)
    for i, (frame, covered) in enumerate(zip(logged, finite, strict=True)):
        values = frame[covered]
        spread = float(values.std()) if values.size else 0.0
        if values.size == 0 or spread < 1e-3:  # log units: flat to 0.1 %
            raise ValueError(
                f"frame {i} has no varying finite counts on the {caking.Q_RANGE[0]}-"
                f"{caking.Q_RANGE[1]} 1/angstrom rings: nothing to classify"
            )
        out[i][covered] = (values - values.mean()) / spread
    return out[:, None]


def preprocess(frames: np.ndarray, geometry: Mapping[str, float] | None = None) -> np.ndarray:
    """Frames (n, rows, cols) in counts to network input (n, 1, 12, 336).

    ``geometry`` is the frames' PONI geometry; by default the simulated
    detector's nominal one (97 x 243 frames only).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected frames of shape (n, rows, cols), got {frames.shape}")
    if geometry is None:
        if frames.shape[1:] != FIELD_SHAPE:
            raise ValueError(
                f"frames of shape {frames.shape[1:]} need their geometry; the nominal one is "
                f"the simulated detector's ({'x'.join(map(str, FIELD_SHAPE))})"
            )
        geometry = nominal_geometry({})
    return normalised_cakes(caking.cakes(frames, geometry))


def geometry_of(config: Mapping[str, Any], distance: float, arm: float) -> dict[str, float]:
    """The PONI geometry of the simulated detector at ``distance`` (mm) and ``arm`` (deg)."""
    from smartlab_plugins.devices.mpb import MPBConfig, poni_geometry

    settings = MPBConfig(
        wavelength=float(config.get("wavelength", MPBConfig.wavelength)),
        pixel_size=float(config.get("pixel_size", MPBConfig.pixel_size)),
        distance=float(distance),
        arm_two_theta=float(arm),
    )
    return poni_geometry(settings)


def nominal_geometry(config: Mapping[str, Any]) -> dict[str, float]:
    """The geometry of the generator config's own detector (its distance and arm)."""
    from smartlab_plugins.devices.mpb import MPBConfig

    return geometry_of(
        config,
        float(config.get("distance", MPBConfig.distance)),
        float(config.get("arm_two_theta", MPBConfig.arm_two_theta)),
    )


def preprocess_set(made: SimulatedSet) -> np.ndarray:
    """Every frame of a simulated MPB set through :func:`preprocess`, grouped by its geometry."""
    from smartlab_plugins.devices.mpb import MPBConfig

    frames = made.inputs["mpb_image"]
    fixed = {  # a set without per-frame geometry was taken at its config's
        "distance": made.config.get("distance", MPBConfig.distance),
        "arm_two_theta": made.config.get("arm_two_theta", MPBConfig.arm_two_theta),
    }
    distance, arm = (
        np.asarray(made.labels.get(name, np.full(len(frames), value)), dtype=float)
        for name, value in fixed.items()
    )
    x = np.empty((len(frames), 1, *INPUT_SHAPE), dtype=np.float32)
    pairs = np.stack([distance, arm], axis=1)
    for pair in np.unique(pairs, axis=0):
        index = np.flatnonzero(np.all(pairs == pair, axis=1))
        x[index] = preprocess(frames[index], geometry_of(made.config, *pair))
    return x


def training_config():
    """The generator config of the training set: boundaries oversampled, geometry drawn."""
    from smartlab_plugins.devices.mpb import MPBConfig

    return replace(
        MPBConfig(),
        near_boundary_fraction=NEAR_BOUNDARY_FRACTION,
        near_curie_fraction=NEAR_CURIE_FRACTION,
        distance_range=DISTANCE_RANGE,
        arm_range=ARM_RANGE,
    )


def away_from_boundaries(composition_margin: np.ndarray, curie_margin: np.ndarray) -> np.ndarray:
    """Events whose label is unambiguous: far from every label change in x and in T."""
    return (np.asarray(composition_margin) >= AWAY_COMPOSITION) & (
        np.asarray(curie_margin) >= AWAY_CURIE
    )


def _accuracy_by(margin: np.ndarray, correct: np.ndarray, bins: Sequence[float]) -> list[dict]:
    """Accuracy per margin bin (the card's curve), bins with events only."""
    curve = []
    for low, high in pairwise(bins):
        inside = (margin >= low) & (margin < high)
        if inside.any():
            curve.append(
                {
                    "margin": [low, high if np.isfinite(high) else None],
                    "n": int(inside.sum()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return curve


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
        """Network inputs, class labels and label margins of a simulated MPB set."""
        return Split(
            preprocess_set(made),
            made.labels["phase"].astype(np.int64),
            {
                "composition_margin": made.labels["composition_margin"].astype(np.float32),
                "curie_margin": made.labels["curie_margin"].astype(np.float32),
            },
        )

    def architecture(self) -> dict[str, Any]:
        return {
            "class": "PhaseNet",
            "params": {"n_classes": len(self.outputs), "input_shape": list(INPUT_SHAPE)},
        }

    def preprocessing(self) -> dict[str, Any]:
        return {
            "steps": [
                "pyFAI integrate2d with the frame's declared geometry (PONI): "
                f"{caking.CHI_BINS} chi bins over {list(caking.CHI_RANGE)} deg x "
                f"{caking.Q_BINS} q bins over {list(caking.Q_RANGE)} 1/angstrom, "
                "bbox pixel splitting, no solid-angle correction",
                "log1p(mean counts per bin)",
                "z-score per frame over covered bins; uncovered bins 0",
            ],
            "classes": self.outputs,
            "away_from_boundary": (
                f"composition margin >= {AWAY_COMPOSITION} (Ti fraction) and "
                f"|T - T_C(x)| >= {AWAY_CURIE} K"
            ),
            "scope": {
                "distance_mm": list(DISTANCE_RANGE),
                "arm_two_theta_deg": list(ARM_RANGE),
                "q_range_inverse_angstrom": list(caking.Q_RANGE),
            },
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
        composition = split.extra["composition_margin"]
        curie = split.extra["curie_margin"]
        away = away_from_boundaries(composition, curie)
        per_class = {
            name: float(correct[away & (split.y == i)].mean())
            for i, name in enumerate(self.outputs)
            if (away & (split.y == i)).any()
        }
        confusion = np.zeros((len(self.outputs), len(self.outputs)), dtype=int)
        np.add.at(confusion, (split.y, predicted), 1)
        return {
            "accuracy": float(correct.mean()),
            "accuracy_away_from_boundary": float(correct[away].mean()) if away.any() else None,
            "n_away_from_boundary": int(away.sum()),
            "expected_calibration_error": expected_calibration_error(probabilities, split.y),
            "accuracy_away_by_class": per_class,
            "accuracy_by_composition_margin": _accuracy_by(
                composition[curie >= AWAY_CURIE], correct[curie >= AWAY_CURIE], COMPOSITION_BINS
            ),
            "accuracy_by_curie_margin": _accuracy_by(curie, correct, CURIE_BINS),
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


def frames_to_input(
    frames: np.ndarray, data_key: Mapping[str, Any], card_config: Mapping[str, Any], field: str
) -> tuple[np.ndarray, bool]:
    """A batch of frames as the network takes it, and whether its geometry was declared.

    With ``geometry`` in the field's data key (pyFAI PONI parameters), frames of
    any shape are integrated for that geometry. Without it, the frames must be
    the simulated detector's 97 x 243 and its nominal geometry (the card's
    generator config) is assumed. Raises ValueError naming the field and what is
    wrong (a geometry key missing or not a number, a shape with no geometry).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(
            f"field {field!r}: expected 2-D frames, got events of shape {frames.shape[1:]}"
        )
    declared = data_key.get("geometry")
    if declared is not None:
        if not isinstance(declared, Mapping):
            raise ValueError(
                f"field {field!r}: geometry must be a mapping of PONI parameters, got "
                f"{type(declared).__name__}"
            )
        return preprocess(frames, caking.checked_geometry(declared, field)), True
    if frames.shape[1:] != FIELD_SHAPE:
        raise ValueError(
            f"field {field!r} holds {'x'.join(map(str, frames.shape[1:]))} frames and declares "
            "no geometry; declare pyFAI PONI parameters as 'geometry' in its data key "
            "(dist, poni1, poni2, rot1, rot2, rot3, wavelength, pixel1, pixel2; m and rad) "
            f"or give {'x'.join(map(str, FIELD_SHAPE))} frames of the simulated detector"
        )
    return preprocess(frames, nominal_geometry(card_config)), False
