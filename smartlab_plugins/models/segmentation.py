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

Input. A frame's grey levels depend on the specimen's etch, the detector's
gain, offset and gamma, none of which says which phase a pixel is; the order of
a frame's pixels does not change with any of them. So each frame is rank
normalised (:func:`preprocess`): a pixel becomes its quantile in the frame,
mapped to zero mean and unit variance. The network then tells phases apart by
shape and texture, as it was trained to, on frames whose brightness per phase,
gain, offset and gamma were drawn per frame from overlapping ranges (the card's
generator config). A frame with no contrast (every pixel, or most of them, one
value) has no quantiles and is refused.

Pixel size. The network was trained on frames of :data:`TRAINING_PIXEL_SIZE_UM`.
A frame of another declared pixel size is resampled to it (linear
interpolation), segmented, and its phase map brought back to the frame's own
grid (nearest neighbour), so the mask has the frame's shape; pixel sizes more
than :data:`PIXEL_SIZE_FACTORS` away are refused (:func:`check_pixel_size`).

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
from scipy import ndimage
from scipy.stats import rankdata
from torch import nn

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.models import runtime
from smartlab_plugins.models.training import Split

if TYPE_CHECKING:
    from smartlab_plugins.models.store import LoadedModel

NAME = "micrograph_unet"
VERSION = "1.1.0"
FIELD = "camera_image"
FRAME_SIZE = 256  # the camera's frame, and the held-out frames the model is scored on
CROP_SIZE = 128  # training crops
MIN_SIDE = 16  # smallest frame side accepted
TILE_SIZE = 512  # frames with a side above this are tiled; tile cores are this big
TILE_MARGIN = 32  # context around each tile core, pixels (receptive radius: 25)
PIXELS_PER_PASS = 8 * FRAME_SIZE * FRAME_SIZE  # whole frames per forward pass, in pixels
TRAINING_PIXEL_SIZE_UM = 0.05  # the generator's pixel size, which the network was trained at
#: Declared pixel sizes from half to twice the training one are resampled to it; others refused.
PIXEL_SIZE_FACTORS = (0.5, 2.0)
#: Length units a data key may declare its ``pixel_size`` in, and their size in um.
LENGTH_UNITS_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}
#: A frame whose rank-normalised values spread less than this (1 for distinct values) has
#: most pixels on one value: a constant, blank or saturated frame, which is refused.
MIN_RANK_SPREAD = 0.5
SPECIMEN_SEED_BASE = 100_000
HELD_OUT_OFFSET = 1000  # as ``smartlab evaluate``'s default: training seed + 1000
#: Training crops also come from specimens imaged at these pixel sizes (um), resampled to
#: the training one as the plugin resamples a declared pixel size ...
RESAMPLED_PIXEL_SIZES_UM = (0.03, 0.04, 0.065, 0.085)
RESAMPLED_SHARE = 0.4  # ... this share of them, split evenly between the sizes
RESAMPLED_SEED_STEP = 100  # specimen seed of size j: specimen_seed(seed) + 100 * (j + 1)
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
    """Generator config of the training crops: default imaging, 128 x 128 frames."""
    from smartlab_plugins.devices.microscopy import MicroscopyConfig

    return MicroscopyConfig(frame_size=CROP_SIZE, n_structures=n_specimens)


def frame_config(n_specimens: int = HELD_OUT_SPECIMENS, pixel_size_um: float | None = None):
    """Generator config of whole held-out frames, as the live camera takes them.

    ``pixel_size_um`` images the same kind of specimen (every length in um) on
    another pixel grid, for the scores at other pixel sizes.
    """
    from dataclasses import replace

    from smartlab_plugins.devices.microscopy import MicroscopyConfig

    config = MicroscopyConfig(frame_size=FRAME_SIZE, n_structures=n_specimens)
    if pixel_size_um is None:
        return config
    return replace(config, structure=replace(config.structure, pixel_size_um=pixel_size_um))


def rank_normalised(frames: np.ndarray) -> np.ndarray:
    """Each frame's pixels (n, rows, columns) replaced by their quantile, scaled to unit variance.

    A pixel of rank ``r`` among ``N`` (ties share their mean rank) becomes
    ``sqrt(12) * ((r - 1/2) / N - 1/2)``: uniform on about [-1.73, 1.73] for a
    frame of distinct values. Any increasing map of the grey levels (a gain,
    an offset, a gamma) leaves it unchanged. Returns float32 of the same shape.
    """
    frames = np.asarray(frames, dtype=np.float32)
    flat = frames.reshape(len(frames), -1)
    if flat.shape[1] == 0:
        return frames.copy()
    quantiles = (rankdata(flat, method="average", axis=1) - 0.5) / flat.shape[1]
    return (np.sqrt(12.0) * (quantiles - 0.5)).astype(np.float32).reshape(frames.shape)


def contrastless(normalised: np.ndarray) -> np.ndarray:
    """Which rank-normalised frames (n, rows, columns) have no usable contrast (bool, (n,)).

    Their values spread less than :data:`MIN_RANK_SPREAD` (standard deviation):
    every pixel one value (0), or most of them (about 80% or more tied), as in
    a blank, constant or saturated frame.
    """
    spread = np.asarray(normalised).reshape(len(normalised), -1).std(axis=1)
    return spread < MIN_RANK_SPREAD


def preprocess(frames: np.ndarray) -> np.ndarray:
    """Frames (n, rows, columns) of any grey scale to network input (n, 1, rows, columns).

    Rank normalisation per frame (:func:`rank_normalised`): the input is the
    same whatever the detector's gain, offset and gamma. Raises ValueError,
    naming the frames, when one has no contrast (:func:`contrastless`).
    """
    x = rank_normalised(frames)
    flat = contrastless(x)
    if flat.any():
        raise ValueError(
            f"frames {np.flatnonzero(flat).tolist()} have no contrast (most pixels share one "
            "value): a micrograph needs grey-level variation to be segmented"
        )
    return x[:, None]


def declared_pixel_size(data_key: dict[str, Any], field: str) -> float | None:
    """The pixel size (um) that a frame's data key declares, or None if it declares none.

    The key holds ``pixel_size`` (a positive number) and ``pixel_size_units``
    (one of :data:`LENGTH_UNITS_UM`), as the SEM camera's does. Raises
    ValueError naming the field and the value when either is unusable.
    """
    if "pixel_size" not in data_key:
        return None
    value, units = data_key["pixel_size"], data_key.get("pixel_size_units")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"field {field!r} declares pixel_size={value!r}; expected a positive number"
        )
    if units not in LENGTH_UNITS_UM:
        raise ValueError(
            f"field {field!r} declares pixel_size {value} with pixel_size_units={units!r}; "
            f"expected one of {', '.join(LENGTH_UNITS_UM)}"
        )
    return float(value) * LENGTH_UNITS_UM[units]


def pixel_size_range() -> tuple[float, float]:
    """Pixel sizes (um) accepted: the training one times :data:`PIXEL_SIZE_FACTORS`."""
    low, high = PIXEL_SIZE_FACTORS
    return TRAINING_PIXEL_SIZE_UM * low, TRAINING_PIXEL_SIZE_UM * high


def check_pixel_size(pixel_size_um: float, field: str = FIELD) -> None:
    """Refuse a pixel size outside :func:`pixel_size_range`, with the range in the message."""
    low, high = pixel_size_range()
    if not low <= pixel_size_um <= high:
        raise ValueError(
            f"{NAME}: field {field!r} declares pixel_size {pixel_size_um:g} um; the model was "
            f"trained at {TRAINING_PIXEL_SIZE_UM:g} um and resamples frames from {low:g} to "
            f"{high:g} um only"
        )


def to_training_grid(frames: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Frames (n, rows, columns) of ``pixel_size_um`` resampled to the training pixel size.

    Linear interpolation of the pixel grid (pixel edges aligned, so the frame
    covers the same area), after a Gaussian anti-aliasing blur when the frame
    is shrunk. The result has ``round(rows * pixel_size_um / 0.05)`` rows
    (likewise columns).
    """
    factor = pixel_size_um / TRAINING_PIXEL_SIZE_UM
    frames = np.asarray(frames, dtype=np.float32)
    if factor < 1.0:
        sigma = 0.5 * np.sqrt(1.0 / factor**2 - 1.0)
        frames = ndimage.gaussian_filter(frames, (0, sigma, sigma), mode="reflect")
    return np.stack(
        [ndimage.zoom(f, factor, order=1, mode="nearest", grid_mode=True) for f in frames]
    )


def to_frame_grid(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel values (n, rows, columns) on the training grid, sampled back onto ``shape``.

    Nearest neighbour: each frame pixel takes the value of the training-grid
    pixel its centre falls in (phase ids stay phase ids).
    """
    rows = np.minimum(
        ((np.arange(shape[0]) + 0.5) * values.shape[1] / shape[0]).astype(int), values.shape[1] - 1
    )
    columns = np.minimum(
        ((np.arange(shape[1]) + 0.5) * values.shape[2] / shape[1]).astype(int), values.shape[2] - 1
    )
    return values[:, rows][:, :, columns]


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
    pixel_size_um: float = TRAINING_PIXEL_SIZE_UM,
) -> Segmentation:
    """Segment frames (n, rows, columns) of any size of at least ``MIN_SIDE`` pixels.

    Frames of another ``pixel_size_um`` are resampled to the training one
    (:func:`to_training_grid`; refused outside :func:`pixel_size_range`) and
    their maps sampled back (:func:`to_frame_grid`), so the mask always has the
    frames' shape and the fractions are those of the frames' pixels. Frames up
    to ``tile`` pixels on a side run whole, ``PIXELS_PER_PASS`` pixels per
    forward pass; larger ones tile by tile (:func:`plan_tiles`), so no forward
    pass sees more than ``(tile + 2 * margin)**2`` pixels. Runs on the device
    the network is on, through the inference runtime (bfloat16 autocast on
    CUDA, plain float32 on the CPU).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or min(frames.shape[1:]) < MIN_SIDE:
        raise ValueError(
            f"expected frames of shape (n, rows, columns) with at least {MIN_SIDE} rows and "
            f"columns, got shape {frames.shape}"
        )
    shape = frames.shape[1:]
    resample = not np.isclose(pixel_size_um, TRAINING_PIXEL_SIZE_UM, rtol=1e-3, atol=0.0)
    if resample:
        check_pixel_size(pixel_size_um)
        frames = to_training_grid(frames, pixel_size_um)
    result = _segment_on_training_grid(net, frames, temperature, uncertainty, tile, margin)
    if resample:
        result.mask = to_frame_grid(result.mask, shape)
        if result.uncertainty is not None:
            result.uncertainty = to_frame_grid(result.uncertainty, shape)
    result.fractions = phase_fractions(result.mask)
    return result


def ood_input(frames: np.ndarray, pixel_size_um: float = TRAINING_PIXEL_SIZE_UM) -> np.ndarray:
    """What the out-of-distribution score reads of frames (n, rows, columns): network input.

    The frames at the training pixel size (:func:`to_training_grid`), cut to
    their central :data:`CROP_SIZE` pixels a side (or the largest multiple of 4
    that fits), as the training crops were, and preprocessed (:func:`preprocess`).
    """
    frames = np.asarray(frames)
    if not np.isclose(pixel_size_um, TRAINING_PIXEL_SIZE_UM, rtol=1e-3, atol=0.0):
        frames = to_training_grid(frames, pixel_size_um)
    sides = [min(CROP_SIZE, length - length % 4) for length in frames.shape[1:]]
    top, left = ((length - side) // 2 for length, side in zip(frames.shape[1:], sides, strict=True))
    return preprocess(frames[:, top : top + sides[0], left : left + sides[1]])


def _segment_on_training_grid(
    net: nn.Module,
    frames: np.ndarray,
    temperature: float,
    uncertainty: bool,
    tile: int,
    margin: int,
) -> Segmentation:
    """:func:`segment` of frames already at the training pixel size (no fractions yet)."""
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


def held_out_frames(
    n: int,
    seed: int,
    n_specimens: int = HELD_OUT_SPECIMENS,
    pixel_size_um: float | None = None,
    imaging: Any = None,
) -> SimulatedSet:
    """``n`` whole 256 x 256 frames from the specimens of ``specimen_seed(seed)``.

    At the generator's pixel size unless ``pixel_size_um`` is given; with the
    imaging conditions drawn per frame unless ``imaging`` fixes them.
    """
    from smartlab_plugins.devices.microscopy import simulate

    config = frame_config(n_specimens, pixel_size_um)
    return simulate(n, seed=specimen_seed(seed), config=config, imaging=imaging)


def frame_metrics(net: nn.Module, frames: SimulatedSet, temperature: float = 1.0) -> dict[str, Any]:
    """Metrics of whole-frame inference (the plugin's :func:`segment`) on simulated frames.

    The frames' pixel size is the generator config's, resampled as the plugin does.
    """
    images, truth = frames.inputs["images"], frames.labels["masks"]
    pixel_size = frames.config["structure"]["pixel_size_um"]
    result = segment(net, images, temperature=temperature, pixel_size_um=pixel_size)
    metrics = {**mask_metrics(result.mask, truth)}
    if np.isclose(pixel_size, TRAINING_PIXEL_SIZE_UM):
        with torch.inference_mode():
            sample = slice(0, min(len(images), 8))
            logits = _logits(net, preprocess(images[sample])).cpu()
        metrics["pixel_ece"] = pixel_calibration_error(logits, truth[sample], temperature)
    return {
        **metrics,
        "generator_seed": frames.seed,
        "pixel_size_um": pixel_size,
        "data": f"whole {FRAME_SIZE}x{FRAME_SIZE} frames of held-out specimens",
    }


def resampled_crops(n: int, seed: int, pixel_size_um: float) -> Split:
    """``n`` training crops of one specimen imaged at ``pixel_size_um``, on the training grid.

    Frames a little larger than a crop's area are simulated at that pixel size,
    resampled (:func:`to_training_grid`; masks with :func:`to_frame_grid`) and
    cut to their central :data:`CROP_SIZE` pixels.
    """
    from dataclasses import replace

    from smartlab_plugins.devices.microscopy import MicroscopyConfig, simulate

    side = int(np.ceil(CROP_SIZE * TRAINING_PIXEL_SIZE_UM / pixel_size_um)) + 2
    base = MicroscopyConfig(frame_size=side, n_structures=1)
    config = replace(base, structure=replace(base.structure, pixel_size_um=pixel_size_um))
    made = simulate(n, seed=seed, config=config)
    images = to_training_grid(made.inputs["images"], pixel_size_um)
    masks = to_frame_grid(made.labels["masks"], images.shape[1:])
    top, left = ((length - CROP_SIZE) // 2 for length in images.shape[1:])
    window = (slice(None), slice(top, top + CROP_SIZE), slice(left, left + CROP_SIZE))
    return Split(preprocess(images[window]), masks[window].astype(np.uint8))


#: Detector change the robustness scores apply to held-out frames: gain, offset, gamma.
SHIFTED_DETECTOR = (1.9, 0.08, 0.62)
#: Fixed SE yields (ferrite, particle, film, lamella) the robustness scores image frames with.
FIXED_LEVELS = {
    "old_simulator_levels": (0.25, 0.65, 0.90, 0.65),
    "particles_brighter_than_films": (0.20, 0.75, 0.50, 0.60),
    "films_brighter_than_particles": (0.20, 0.50, 0.75, 0.60),
}
#: Pixel sizes (um) the robustness scores image held-out specimens at.
OTHER_PIXEL_SIZES = (0.03, 0.04, 0.065, 0.08, 0.1)


def robustness_metrics(net: nn.Module, seed: int, n: int = 8) -> dict[str, Any]:
    """Mean and per-phase IoU of ``n`` whole frames under conditions the scope claims.

    ``detector_shifted``: the held-out frames of ``specimen_seed(seed)`` through
    another detector response (:data:`SHIFTED_DETECTOR`), with the share of
    pixels whose phase stays the same; one entry per :data:`FIXED_LEVELS`
    (films and particles of equal shape, swapped brightness); one per
    :data:`OTHER_PIXEL_SIZES` (the same steel on another pixel grid, resampled
    as the plugin does). One specimen per condition, to keep it quick.
    """
    from smartlab_plugins.devices.microscopy import Imaging, respond

    def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        metrics = mask_metrics(predicted, truth)
        return {"mean_iou": metrics["mean_iou"], "iou": metrics["iou"]}

    frames = held_out_frames(n, seed, n_specimens=1)
    images, truth = frames.inputs["images"], frames.labels["masks"]
    plain = segment(net, images).mask
    gain, offset, gamma = (np.full(n, v) for v in SHIFTED_DETECTOR)
    shifted = segment(net, respond(images, gain, offset, gamma)).mask
    out: dict[str, Any] = {
        "frames_per_condition": n,
        "detector_shifted": {
            **scores(shifted, truth),
            "gain_offset_gamma": list(SHIFTED_DETECTOR),
            "same_phase_as_unshifted": float((shifted == plain).mean()),
        },
    }
    for name, levels in FIXED_LEVELS.items():
        fixed = held_out_frames(n, seed, 1, imaging=Imaging.fixed(levels, n=n))
        out[name] = {
            **scores(segment(net, fixed.inputs["images"]).mask, fixed.labels["masks"]),
            "levels": list(levels),
        }
    out["pixel_size_um"] = {}
    for size in OTHER_PIXEL_SIZES:
        other = held_out_frames(n, seed, 1, pixel_size_um=size)
        mask = segment(net, other.inputs["images"], pixel_size_um=size).mask
        out["pixel_size_um"][str(size)] = scores(mask, other.labels["masks"])
    return out


class MicrographTask:
    """Training and scoring of ``micrograph_unet`` (see :mod:`smartlab_plugins.models.training`).

    ``make_data`` returns 128 x 128 crops (``n`` of them) from
    ``n_specimens`` specimens of generator seed ``specimen_seed(seed)``; the
    loss is the per-pixel cross-entropy and the validation score 1 - mean IoU.

    Whole-frame scores need the network, which ``evaluate`` is not given. The
    shared ``train_model`` calls ``make_data``, then ``calibrate(net, ...)``,
    then ``evaluate`` on one Task, so ``make_data`` notes the held-out seed
    (``seed + HELD_OUT_OFFSET``) and ``calibrate`` the trained network; ``evaluate``
    then reports ``held_out_frames`` whole 256 x 256 frames of that seed at the
    top level, the crops of the test split it was given under ``test_split``
    and (unless ``robustness`` is False) :func:`robustness_metrics` under
    ``robustness``. Otherwise (``smartlab evaluate``, fine-tuning) it scores the
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
        robustness: bool = True,
        resampled_pixel_sizes: tuple[float, ...] = RESAMPLED_PIXEL_SIZES_UM,
    ) -> None:
        self.outputs = phase_names()
        self.width, self.levels = width, levels
        self.n_specimens, self.held_out = n_specimens, held_out
        self.robustness = robustness
        self.resampled_pixel_sizes = resampled_pixel_sizes
        self.held_out_seed: int | None = None
        self.trained: nn.Module | None = None

    def generator_config(self) -> dict[str, Any]:
        return {
            **config_dict(crop_config(self.n_specimens)),
            "specimen_seed": f"{SPECIMEN_SEED_BASE} + generator_seed",
            "held_out_specimen_seed": f"{SPECIMEN_SEED_BASE} + generator_seed + {HELD_OUT_OFFSET}",
            "resampled_pixel_sizes_um": list(self.resampled_pixel_sizes),
            "resampled_share": RESAMPLED_SHARE if self.resampled_pixel_sizes else 0.0,
            "resampled_specimen_seed": f"{SPECIMEN_SEED_BASE} + generator_seed + "
            f"{RESAMPLED_SEED_STEP} * (j + 1) for pixel size j, one specimen each",
        }

    def make_data(self, n: int, seed: int) -> Split:
        """``n`` training crops; notes the seed of the held-out whole frames.

        A share :data:`RESAMPLED_SHARE` of them is imaged at the
        ``resampled_pixel_sizes`` and brought to the training pixel size as the
        plugin does (:func:`to_training_grid`, masks by nearest neighbour), so
        the network has seen the textures that resampling leaves.
        """
        from smartlab_plugins.devices.microscopy import simulate

        self.held_out_seed = seed + HELD_OUT_OFFSET
        sizes = self.resampled_pixel_sizes
        per_size = round(n * RESAMPLED_SHARE / len(sizes)) if sizes else 0
        config = crop_config(self.n_specimens)
        parts = [self.from_set(simulate(n - per_size * len(sizes), specimen_seed(seed), config))]
        for j, size in enumerate(sizes):
            parts.append(
                resampled_crops(per_size, specimen_seed(seed) + RESAMPLED_SEED_STEP * (j + 1), size)
            )
        return Split(
            np.concatenate([part.x for part in parts]), np.concatenate([part.y for part in parts])
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
        low, high = pixel_size_range()
        config = crop_config(self.n_specimens)
        return {
            "steps": [
                f"frames of another declared pixel size: resampled to {TRAINING_PIXEL_SIZE_UM} um "
                f"(linear; accepted from {low:g} to {high:g} um, others refused), the phase map "
                "sampled back to the frame's grid",
                "rank normalisation per frame: sqrt(12) * (quantile - 1/2); frames whose values "
                f"spread less than {MIN_RANK_SPREAD} (constant, blank, saturated) are refused",
                f"reflect-pad rows and columns to a multiple of {2 ** (self.levels - 1)}",
                f"frames with a side above {TILE_SIZE}: tiles of {TILE_SIZE} with "
                f"{TILE_MARGIN} pixels of context",
            ],
            "classes": self.outputs,
            "training_crop": CROP_SIZE,
            "frame_size": f"any, at least {MIN_SIDE} pixels a side",
            "scope": {
                "phases": {
                    "ferrite": "matrix grains",
                    "spheroidite": "compact round cementite particles, in grains and on boundaries",
                    "gb_carbide": "thin continuous cementite films along grain boundaries",
                    "pearlite": "colonies of cementite/ferrite lamellae",
                },
                "pixel_size_um": {
                    "trained": TRAINING_PIXEL_SIZE_UM,
                    "accepted": [low, high],
                },
                "lamella_spacing_um": list(config.structure.lamella_spacing_um),
                "gb_thickness_um": list(config.structure.gb_thickness_um),
                "ferrite_level": list(config.ferrite_level),
                "cementite_contrast": list(config.cementite_contrast),
                "carbide_spread": config.carbide_spread,
                "detector_gain": list(config.gain),
                "detector_offset": list(config.offset),
                "detector_gamma": list(config.gamma),
                "dose_electrons_per_pixel": config.dose,
                "note": "rank normalisation makes the answer independent of any increasing "
                "grey-level map, so gain, offset and gamma beyond these ranges give the same "
                "input; brightness is not a cue by design",
            },
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
        scores = {**frame_metrics(self.trained, frames, temperature), "test_split": metrics}
        if self.robustness:
            scores["robustness"] = robustness_metrics(self.trained, self.held_out_seed)
        return scores

    def evaluate_model(self, model: LoadedModel, n: int, seed: int) -> dict[str, Any]:
        """Metrics of a loaded model on ``n`` whole frames of ``specimen_seed(seed)``."""
        temperature = model.card.extras.get("temperature", 1.0)
        return frame_metrics(model.net, held_out_frames(n, seed), temperature)
