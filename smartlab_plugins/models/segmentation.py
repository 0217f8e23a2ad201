"""``micrograph_unet``: per-pixel phase maps and phase area fractions of SEM micrographs.

The network is a small U-Net, :class:`~smartlab_plugins.models.nets.MicrographUNet`
(three resolution levels, 16/32/64 feature maps, two 3x3 convolutions with
batch norm and ReLU per level, skip connections):
pearlite is told from ferrite and grain-boundary films from particles by their
texture and shape over a few micrometres, which the encoder's 50-pixel
receptive field sees, while the decoder's skips keep the one-pixel edges that
the area fractions depend on. It is fully convolutional, so it is trained on
small crops (64 x 64, cheap steps, many positions) and run on whole frames of
any size: frames are reflect-padded to a multiple of its downsampling factor
(4), and frames larger than :data:`TILE_SIZE` on a side are cut into
overlapping tiles (each tile's core plus :data:`TILE_MARGIN` pixels of
context, more than the receptive radius), so memory stays bounded whatever
the frame size while the answer matches whole-frame inference.

Seeds: ``simulate(seed=s)`` and ``SEMCamera(seed=s)`` image the same
specimen, so the generator seed of every data set made here is
``SPECIMEN_SEED_BASE + seed``: no specimen the model is trained or scored on
is one a device with a small seed shows. Whole frames for the held-out
scores come from ``SPECIMEN_SEED_BASE + seed + HELD_OUT_OFFSET``.

The per-pixel uncertainty is ``1 - max softmax(logits / T)`` with the
temperature ``T`` fitted on validation pixels (:meth:`MicrographTask.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.models import runtime
from smartlab_plugins.models.training import Split

if TYPE_CHECKING:
    from smartlab_plugins.models.store import LoadedModel

NAME = "micrograph_unet"
VERSION = "1.0.0"
FIELD = "camera_image"
FRAME_SIZE = 256  # the camera's frame, and the held-out frames the model is scored on
CROP_SIZE = 64  # training crops
MIN_SIDE = 16  # smallest frame side accepted
TILE_SIZE = 512  # frames with a side above this are tiled; tile cores are this big
TILE_MARGIN = 32  # context around each tile core, pixels (receptive radius: 25)
PIXELS_PER_PASS = 8 * FRAME_SIZE * FRAME_SIZE  # whole frames per forward pass, in pixels
INPUT_OFFSET = 0.34  # mean SE yield of the training crops
INPUT_SCALE = 0.17  # and its standard deviation
SPECIMEN_SEED_BASE = 100_000
HELD_OUT_OFFSET = 1000  # as ``smartlab evaluate``'s default: training seed + 1000
TRAINING_SPECIMENS = 4
HELD_OUT_FRAMES = 32
HELD_OUT_SPECIMENS = 2
CALIBRATION_PIXELS = 200_000
ECE_PIXELS = 100_000


def phase_names() -> list[str]:
    """The phases, in the order of the mask's ids and the network's outputs."""
    from smartlab_plugins.devices.microscopy import PHASES

    return list(PHASES)


def specimen_seed(seed: int) -> int:
    """The generator seed of a data set made with ``seed`` (disjoint from devices' seeds)."""
    return SPECIMEN_SEED_BASE + seed


def crop_config(n_specimens: int = TRAINING_SPECIMENS):
    """Generator config of the training crops: default imaging, 64 x 64 frames."""
    from smartlab_plugins.devices.microscopy import MicroscopyConfig

    return MicroscopyConfig(frame_size=CROP_SIZE, n_structures=n_specimens)


def frame_config(n_specimens: int = HELD_OUT_SPECIMENS):
    """Generator config of whole held-out frames, as the live camera takes them."""
    from smartlab_plugins.devices.microscopy import MicroscopyConfig

    return MicroscopyConfig(frame_size=FRAME_SIZE, n_structures=n_specimens)


def preprocess(frames: np.ndarray) -> np.ndarray:
    """Frames (n, rows, columns) in SE yield units to network input (n, 1, rows, columns).

    A fixed affine map, not a per-frame z-score: the simulated detector reports
    absolute yield at every dose, and a frame's mean and spread depend on its
    phase composition, which is what is being measured.
    """
    frames = np.asarray(frames, dtype=np.float32)
    return ((frames - INPUT_OFFSET) / INPUT_SCALE)[:, None]


@dataclass(frozen=True)
class Tile:
    """One piece of a tiled frame: the ``window`` fed to the network, the ``core`` kept."""

    window: tuple[slice, slice]
    core: tuple[slice, slice]

    @property
    def inner(self) -> tuple[slice, slice]:
        """The core in the window's own coordinates."""
        return tuple(
            slice(c.start - w.start, c.stop - w.start)
            for c, w in zip(self.core, self.window, strict=True)
        )


def plan_tiles(
    rows: int, columns: int, tile: int = TILE_SIZE, margin: int = TILE_MARGIN, factor: int = 4
) -> list[Tile]:
    """Tiles whose cores (``tile`` square, smaller at the far edges) cover the frame once.

    Each window is its core plus ``margin`` pixels on every side, clipped to the
    frame. ``tile`` and ``margin`` must be multiples of the network's
    downsampling ``factor`` so that every window's pooling grid lines up with
    the whole frame's, which is what makes a tiled answer equal the untiled one.
    """
    if tile % factor or margin % factor:
        raise ValueError(
            f"tile={tile} and margin={margin} must be multiples of the downsampling factor {factor}"
        )

    def spans(length: int) -> list[tuple[slice, slice]]:
        return [
            (
                slice(max(0, start - margin), min(length, start + tile + margin)),
                slice(start, min(length, start + tile)),
            )
            for start in range(0, length, tile)
        ]

    return [
        Tile(window=(row_window, column_window), core=(row_core, column_core))
        for (row_window, row_core), (column_window, column_core) in product(
            spans(rows), spans(columns)
        )
    ]


@dataclass
class Segmentation:
    """Phase map, area fractions and (on request) per-pixel uncertainty of each frame."""

    mask: np.ndarray  # (n, rows, columns) uint8 phase ids
    fractions: np.ndarray  # (n, n_phases) float64 area fractions
    uncertainty: np.ndarray | None = None  # (n, rows, columns) float32, 1 - max probability


def segment(
    net: nn.Module,
    frames: np.ndarray,
    *,
    temperature: float = 1.0,
    uncertainty: bool = False,
    tile: int = TILE_SIZE,
    margin: int = TILE_MARGIN,
) -> Segmentation:
    """Segment frames (n, rows, columns) of any size of at least ``MIN_SIDE`` pixels.

    Frames up to ``tile`` pixels on a side run whole, ``PIXELS_PER_PASS``
    pixels per forward pass; larger ones tile by tile (:func:`plan_tiles`),
    so no forward pass sees more than ``(tile + 2 * margin)**2`` pixels.
    Runs on the device the network is on, through the inference runtime
    (bfloat16 autocast on CUDA, plain float32 on the CPU).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or min(frames.shape[1:]) < MIN_SIDE:
        raise ValueError(
            f"expected frames of shape (n, rows, columns) with at least {MIN_SIDE} rows and "
            f"columns, got shape {frames.shape}"
        )
    n, rows, columns = frames.shape
    x = preprocess(frames)
    result = Segmentation(
        mask=np.empty((n, rows, columns), dtype=np.uint8),
        fractions=np.empty((n, 0)),
        uncertainty=np.empty((n, rows, columns), dtype=np.float32) if uncertainty else None,
    )
    net.eval()
    with torch.inference_mode():
        if max(rows, columns) <= tile:
            per_pass = max(1, PIXELS_PER_PASS // (rows * columns))
            for start in range(0, n, per_pass):
                part = slice(start, start + per_pass)
                _fill(result, part, _logits(net, x[part]), temperature)
        else:
            for piece in plan_tiles(rows, columns, tile, margin, net.factor):
                for i in range(n):
                    logits = _logits(net, x[(slice(i, i + 1), slice(None), *piece.window)])
                    _fill(
                        result,
                        (i, *piece.core),
                        logits[(0, slice(None), *piece.inner)],
                        temperature,
                    )
    result.fractions = phase_fractions(result.mask)
    return result


def _logits(net: nn.Module, x: np.ndarray) -> torch.Tensor:
    """Logits for input ``x`` (n, 1, rows, columns), reflect-padded to the pooling factor.

    Float32 on the network's device (:func:`~smartlab_plugins.models.runtime.forward`):
    the phase map and the uncertainty are reduced from them there, so only those
    come back from a GPU.
    """
    rows, columns = x.shape[-2:]
    batch = torch.as_tensor(x)
    pad_rows, pad_columns = (-rows) % net.factor, (-columns) % net.factor
    if pad_rows or pad_columns:
        batch = F.pad(batch, (0, pad_columns, 0, pad_rows), mode="reflect")
    return runtime.forward(net, batch, on_device=True)[:, :, :rows, :columns]


def _fill(result: Segmentation, where: Any, logits: torch.Tensor, temperature: float) -> None:
    """Write the argmax phase of ``logits`` (classes on axis -3) into ``result`` at ``where``.

    With uncertainty wanted, also 1 - the largest temperature-scaled probability,
    1 - 1 / sum_k exp((logit_k - max logit) / T). (``max`` gives the index
    several times faster than ``argmax`` over a non-innermost axis on the CPU.)
    """
    top, index = logits.max(dim=-3)
    result.mask[where] = index.to(torch.uint8).cpu().numpy()
    if result.uncertainty is not None:
        spread = torch.exp((logits - top.unsqueeze(-3)) / temperature).sum(dim=-3)
        result.uncertainty[where] = (1.0 - 1.0 / spread).cpu().numpy()


def phase_fractions(masks: np.ndarray, n_phases: int = 4) -> np.ndarray:
    """Area fraction of each phase per mask: (n, rows, columns) -> (n, n_phases) float64."""
    flat = masks.reshape(len(masks), -1).astype(np.int64)
    offsets = np.arange(len(masks))[:, None] * n_phases
    counts = np.bincount((flat + offsets).ravel(), minlength=len(masks) * n_phases)
    return counts.reshape(len(masks), n_phases) / flat.shape[1]


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, n_phases: int = 4) -> np.ndarray:
    """Pixel counts, rows the true phase and columns the predicted one."""
    index = truth.astype(np.int64).ravel() * n_phases + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=n_phases * n_phases).reshape(n_phases, n_phases)


def mask_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Per-phase IoU, mean IoU, pixel accuracy and area-fraction errors of predicted masks.

    IoU is pooled over all pixels of all masks (None for a phase in neither);
    the mean IoU averages the phases that have one. Fraction errors are
    |predicted - true| area fraction per mask, in percentage points.
    """
    names = phase_names()
    confusion = confusion_matrix(predicted, truth, len(names))
    hits = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
    iou = {name: (float(hits[k] / union[k]) if union[k] else None) for k, name in enumerate(names)}
    errors = 100 * np.abs(
        phase_fractions(predicted, len(names)) - phase_fractions(truth, len(names))
    )
    return {
        "iou": iou,
        "mean_iou": float(np.mean([v for v in iou.values() if v is not None])),
        "pixel_accuracy": float(hits.sum() / confusion.sum()),
        "fraction_error_pp": {
            name: {"mean": float(errors[:, k].mean()), "max": float(errors[:, k].max())}
            for k, name in enumerate(names)
        },
        "fraction_error_pp_mean": float(errors.mean()),
        "fraction_error_pp_max": float(errors.max()),
        "confusion": {"phases": names, "rows_true_columns_predicted": confusion.tolist()},
        "n": len(truth),
        "frame_shape": list(truth.shape[1:]),
    }


def pixel_calibration_error(
    logits: torch.Tensor, truth: np.ndarray, temperature: float, pixels: int = ECE_PIXELS
) -> float:
    """Expected calibration error of the per-pixel probabilities, on a fixed pixel sample."""
    from smartlab_plugins.models.phase import expected_calibration_error

    flat_logits, flat_truth = _pixel_sample(logits, truth, pixels)
    probabilities = torch.softmax(flat_logits / temperature, dim=1).numpy()
    return expected_calibration_error(probabilities, flat_truth)


def _pixel_sample(
    logits: torch.Tensor, truth: np.ndarray, pixels: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Up to ``pixels`` pixels' logits (m, classes) and labels (m,), drawn with a fixed seed."""
    flat_logits = logits.float().permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    flat_truth = np.asarray(truth).astype(np.int64).ravel()
    if len(flat_truth) > pixels:
        index = np.random.default_rng(0).choice(len(flat_truth), pixels, replace=False)
        return flat_logits[torch.as_tensor(index)], flat_truth[index]
    return flat_logits, flat_truth


def fit_temperature(logits: torch.Tensor, truth: np.ndarray) -> float:
    """One temperature T minimising the cross-entropy of logits / T on a pixel sample."""
    flat_logits, flat_truth = _pixel_sample(logits, truth, CALIBRATION_PIXELS)
    target = torch.as_tensor(flat_truth)
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(flat_logits / torch.exp(log_t), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(torch.exp(log_t).detach())


def held_out_frames(n: int, seed: int, n_specimens: int = HELD_OUT_SPECIMENS) -> SimulatedSet:
    """``n`` whole 256 x 256 frames from the specimens of ``specimen_seed(seed)``."""
    from smartlab_plugins.devices.microscopy import simulate

    return simulate(n, seed=specimen_seed(seed), config=frame_config(n_specimens))


def frame_metrics(net: nn.Module, frames: SimulatedSet, temperature: float = 1.0) -> dict[str, Any]:
    """Metrics of whole-frame inference (the plugin's :func:`segment`) on simulated frames."""
    images, truth = frames.inputs["images"], frames.labels["masks"]
    result = segment(net, images, temperature=temperature)
    with torch.inference_mode():
        sample = slice(0, min(len(images), 8))
        logits = _logits(net, preprocess(images[sample])).cpu()
    return {
        **mask_metrics(result.mask, truth),
        "pixel_ece": pixel_calibration_error(logits, truth[sample], temperature),
        "generator_seed": frames.seed,
        "data": f"whole {FRAME_SIZE}x{FRAME_SIZE} frames of held-out specimens",
    }


class MicrographTask:
    """Training and scoring of ``micrograph_unet`` (see :mod:`smartlab_plugins.models.training`).

    ``make_data`` returns 64 x 64 crops (``n`` of them) from
    ``n_specimens`` specimens of generator seed ``specimen_seed(seed)``; the
    loss is the per-pixel cross-entropy and the validation score 1 - mean IoU.

    Whole-frame scores need the network, which ``evaluate`` is not given. The
    shared ``train_model`` calls ``make_data``, then ``calibrate(net, ...)``,
    then ``evaluate`` on one Task, so ``make_data`` notes the held-out seed
    (``seed + HELD_OUT_OFFSET``) and ``calibrate`` the trained network; ``evaluate``
    then reports ``held_out_frames`` whole 256 x 256 frames of that seed at the
    top level, and the crops of the test split it was given under
    ``test_split``. Otherwise (``smartlab evaluate``, fine-tuning) it scores the
    split it is given; :meth:`evaluate_model` scores whole frames of any seed.
    """

    name = NAME
    version = VERSION
    kind = "segmentation"
    case = "microscopy"
    input_field_shape = (FRAME_SIZE, FRAME_SIZE)

    def __init__(
        self,
        width: int = 16,
        levels: int = 3,
        n_specimens: int = TRAINING_SPECIMENS,
        held_out: int = HELD_OUT_FRAMES,
    ) -> None:
        self.outputs = phase_names()
        self.width, self.levels = width, levels
        self.n_specimens, self.held_out = n_specimens, held_out
        self.held_out_seed: int | None = None
        self.trained: nn.Module | None = None

    def generator_config(self) -> dict[str, Any]:
        return {
            **config_dict(crop_config(self.n_specimens)),
            "specimen_seed": f"{SPECIMEN_SEED_BASE} + generator_seed",
            "held_out_specimen_seed": f"{SPECIMEN_SEED_BASE} + generator_seed + {HELD_OUT_OFFSET}",
        }

    def make_data(self, n: int, seed: int) -> Split:
        """``n`` training crops; notes the seed of the held-out whole frames."""
        from smartlab_plugins.devices.microscopy import simulate

        self.held_out_seed = seed + HELD_OUT_OFFSET
        return self.from_set(
            simulate(n, seed=specimen_seed(seed), config=crop_config(self.n_specimens))
        )

    def from_set(self, made: SimulatedSet) -> Split:
        """Network inputs and masks (uint8 phase ids) of a simulated microscopy set."""
        return Split(preprocess(made.inputs["images"]), made.labels["masks"].astype(np.uint8))

    def architecture(self) -> dict[str, Any]:
        return {
            "class": "MicrographUNet",
            "params": {"n_classes": len(self.outputs), "width": self.width, "levels": self.levels},
        }

    def preprocessing(self) -> dict[str, Any]:
        return {
            "steps": [
                f"(SE yield - {INPUT_OFFSET}) / {INPUT_SCALE}",
                f"reflect-pad rows and columns to a multiple of {2 ** (self.levels - 1)}",
                f"frames with a side above {TILE_SIZE}: tiles of {TILE_SIZE} with "
                f"{TILE_MARGIN} pixels of context",
            ],
            "classes": self.outputs,
            "training_crop": CROP_SIZE,
            "frame_size": f"any, at least {MIN_SIDE} pixels a side; pixel size 0.05 um",
            "uncertainty": "1 - max softmax(logits / temperature)",
        }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel cross-entropy."""
        return F.cross_entropy(output, target.long())

    def selection_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 - mean IoU over the phases (lower is better)."""
        metrics = mask_metrics(output.argmax(dim=1).numpy(), target.numpy())
        return torch.tensor(1.0 - metrics["mean_iou"])

    def calibrate(self, net: nn.Module, validation: Split) -> dict[str, Any]:
        """The uncertainty's temperature, fitted on validation pixels; keeps ``net`` (see above)."""
        from smartlab_plugins.models.training import predict

        self.trained = net
        return {"temperature": fit_temperature(predict(net, validation.x), validation.y)}

    def evaluate(
        self, output: torch.Tensor, split: Split, calibration: dict | None = None
    ) -> dict[str, Any]:
        temperature = (calibration or {}).get("temperature", 1.0)
        metrics = {
            **mask_metrics(output.argmax(dim=1).numpy(), split.y),
            "pixel_ece": pixel_calibration_error(output, split.y, temperature),
        }
        if self.trained is None or self.held_out_seed is None:
            return metrics
        frames = held_out_frames(self.held_out, self.held_out_seed)
        return {**frame_metrics(self.trained, frames, temperature), "test_split": metrics}

    def evaluate_model(self, model: LoadedModel, n: int, seed: int) -> dict[str, Any]:
        """Metrics of a loaded model on ``n`` whole frames of ``specimen_seed(seed)``."""
        temperature = model.card.extras.get("temperature", 1.0)
        return frame_metrics(model.net, held_out_frames(n, seed), temperature)
