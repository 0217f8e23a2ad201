"""micrograph_unet's model: a tiny U-Net learns the phases; tiling, padding and uncertainty hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smartlab_plugins.devices.microscopy import MicroscopyConfig, simulate
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.cards import ModelCard
from smartlab_plugins.models.evaluate import evaluate
from smartlab_plugins.models.segmentation import (
    MicrographTask,
    plan_tiles,
    segment,
)
from smartlab_plugins.models.store import LoadedModel, load_model
from smartlab_plugins.models.training import TrainingConfig, train_model

TINY_SEED = 3


def train_tiny(out: Path) -> ModelCard:
    """A width-8 U-Net on 1,000 crops of one specimen: about 15 s of training on one thread."""
    config = TrainingConfig(
        n_samples=1000,
        seed=TINY_SEED,
        batch_size=8,
        learning_rate=3e-3,
        max_epochs=3,
        max_minutes=1.0,
        threads=1,
    )
    return train_model(
        MicrographTask(width=8, n_specimens=1, held_out=16), config, out, progress=False
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelCard, LoadedModel]:
    out = tmp_path_factory.mktemp("micrograph_unet")
    card = train_tiny(out)
    return card, load_model(segmentation.NAME, out, device="cpu")


def frames(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames of ``size`` pixels and their masks, from one specimen never trained on."""
    made = simulate(n, seed=seed, config=MicroscopyConfig(frame_size=size, n_structures=1))
    return made.inputs["images"], made.labels["masks"]


def test_a_tiny_unet_segments_held_out_frames_and_writes_a_complete_card(tiny):
    card, model = tiny
    metrics = card.metrics  # 16 whole 256 x 256 frames of specimens never trained on

    assert metrics["mean_iou"] > 0.88, metrics["iou"]
    assert min(metrics["iou"].values()) > 0.8, metrics["iou"]
    assert metrics["fraction_error_pp_mean"] < 1.0
    assert metrics["fraction_error_pp_max"] < 4.0
    assert metrics["frame_shape"] == [256, 256] and metrics["n"] == 16
    assert metrics["generator_seed"] == segmentation.SPECIMEN_SEED_BASE + TINY_SEED + 1000
    assert metrics["test_split"]["frame_shape"] == [64, 64]
    assert metrics["test_split"]["n"] == 100
    assert card.data["generator_seed"] == TINY_SEED
    assert card.data["generator_config"]["frame_size"] == 64
    assert card.data["generator_config"]["specimen_seed"] == "100000 + generator_seed"
    assert card.architecture == {
        "class": "MicrographUNet",
        "params": {"n_classes": 4, "width": 8, "levels": 3},
    }
    assert 0.05 < card.extras["temperature"] < 5.0
    assert model.card.sha256 == card.sha256


def test_evaluate_model_scores_whole_frames_of_a_new_seed(tiny):
    _, model = tiny
    metrics = MicrographTask().evaluate_model(model, n=6, seed=TINY_SEED + 2000)

    assert metrics["frame_shape"] == [256, 256]
    assert metrics["generator_seed"] == segmentation.SPECIMEN_SEED_BASE + TINY_SEED + 2000
    assert metrics["mean_iou"] > 0.85
    assert metrics["pixel_accuracy"] > 0.95


def test_a_1024_frame_is_tiled_with_bounded_passes_and_matches_whole_frame_inference(tiny):
    _, model = tiny
    images, truth = frames(1, 1024, seed=41)
    passes: list[tuple[int, ...]] = []
    hook = model.net.register_forward_pre_hook(lambda _, args: passes.append(args[0].shape))
    try:
        tiled = segment(model.net, images, uncertainty=True)
    finally:
        hook.remove()
    whole = segment(model.net, images, uncertainty=True, tile=1024)

    tiles = plan_tiles(1024, 1024)
    assert len(tiles) == 4 and len(passes) == 4
    assert max(max(shape[-2:]) for shape in passes) == 512 + 32  # core + margin on one side
    covered = np.zeros((1024, 1024), dtype=int)
    for piece in tiles:
        covered[piece.core] += 1
    assert (covered == 1).all()
    assert (tiled.mask == whole.mask).mean() > 0.9999
    assert np.abs(tiled.uncertainty - whole.uncertainty).max() < 1e-3
    assert (tiled.mask == truth).mean() > 0.95


def test_frames_of_other_sizes_are_padded_and_tiny_ones_refused(tiny):
    _, model = tiny
    for size in (250, 90):
        images, truth = frames(2, size, seed=42)
        result = segment(model.net, images)
        assert result.mask.shape == (2, size, size)
        assert (result.mask == truth).mean() > 0.95, size
        np.testing.assert_allclose(result.fractions.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match=r"at least 16 rows and columns, got shape \(1, 8, 8\)"):
        segment(model.net, np.zeros((1, 8, 8), dtype=np.float32))


def test_the_uncertainty_is_higher_where_the_phase_map_is_wrong(tiny):
    card, model = tiny
    images, truth = frames(4, 256, seed=43)
    result = segment(model.net, images, temperature=card.extras["temperature"], uncertainty=True)
    wrong = result.mask != truth
    assert wrong.any()
    assert result.uncertainty[wrong].mean() > 3 * result.uncertainty[~wrong].mean()
    assert result.uncertainty.min() >= 0.0 and result.uncertainty.max() <= 0.75


def test_the_shipped_model_meets_the_segmentation_targets_on_new_frames():
    report = evaluate(segmentation.NAME, n=16, seed=2024)
    metrics = report["metrics"]

    assert metrics["frame_shape"] == [256, 256] and metrics["n"] == 16
    assert metrics["mean_iou"] >= 0.90, metrics["iou"]
    assert min(metrics["iou"].values()) >= 0.85, metrics["iou"]
    assert metrics["fraction_error_pp_max"] <= 2.0, metrics["fraction_error_pp"]
