"""micrograph_unet's model: phases by shape, any gain and gamma, other pixel sizes, tiling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from smartlab_plugins.devices.microscopy import (
    Imaging,
    MicroscopyConfig,
    MicrostructureConfig,
    respond,
    simulate,
)
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.cards import ModelCard
from smartlab_plugins.models.evaluate import evaluate
from smartlab_plugins.models.segmentation import (
    MicrographTask,
    declared_pixel_size,
    mask_metrics,
    plan_tiles,
    preprocess,
    rank_normalised,
    segment,
)
from smartlab_plugins.models.store import LoadedModel, load_model
from smartlab_plugins.models.training import TrainingConfig, train_model

TINY_SEED = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    """A width-8 U-Net on 160 crops of one specimen, one epoch: the card, not the accuracy."""
    config = TrainingConfig(
        n_samples=160,
        seed=TINY_SEED,
        batch_size=8,
        learning_rate=3e-3,
        max_epochs=1,
        max_minutes=0.5,
        threads=1,
    )
    task = MicrographTask(width=8, n_specimens=1, held_out=2, robustness=False)
    return train_model(task, config, tmp_path_factory.mktemp("micrograph_unet"), progress=False)


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    """The shipped micrograph_unet."""
    return load_model(segmentation.NAME, device="cpu")


def frames(
    n: int, size: int, seed: int, pixel_size_um: float = 0.05, imaging: Imaging | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames of ``size`` pixels and their masks, from one specimen never trained on."""
    structure = MicrostructureConfig(size_px=max(768, size), pixel_size_um=pixel_size_um)
    config = MicroscopyConfig(frame_size=size, n_structures=1, structure=structure)
    made = simulate(n, seed=seed, config=config, imaging=imaging)
    return made.inputs["images"], made.labels["masks"]


def test_training_writes_a_complete_card_with_the_scope(tiny):
    metrics, card = tiny.metrics, tiny

    assert metrics["frame_shape"] == [256, 256] and metrics["n"] == 2
    assert metrics["generator_seed"] == segmentation.SPECIMEN_SEED_BASE + TINY_SEED + 1000
    assert metrics["pixel_size_um"] == 0.05
    assert metrics["test_split"]["frame_shape"] == [128, 128]
    assert set(metrics["iou"]) == {"ferrite", "spheroidite", "gb_carbide", "pearlite"}
    generator = card.data["generator_config"]
    assert generator["frame_size"] == 128 and generator["gamma"] == [0.6, 1.6]
    scope = card.preprocessing["scope"]
    assert scope["pixel_size_um"] == {"trained": 0.05, "accepted": [0.025, 0.1]}
    assert scope["detector_gain"] == [0.5, 2.0] and scope["detector_gamma"] == [0.6, 1.6]
    assert set(scope["phases"]) == set(card.outputs)
    assert any("rank normalisation" in step for step in card.preprocessing["steps"])
    assert card.version == "1.1.0"
    assert card.architecture == {
        "class": "MicrographUNet",
        "params": {"n_classes": 4, "width": 8, "levels": 3},
    }
    assert 0.05 < card.extras["temperature"] < 20.0


def test_rank_normalisation_undoes_gain_offset_and_gamma_and_refuses_flat_frames():
    images, _ = frames(3, 64, seed=40)
    shifted = respond(
        images, np.array([0.3, 1.9, 7.0]), np.array([0.2, -0.04, 3.0]), np.array([1.7, 0.62, 2.5])
    )
    # The same order of pixels, up to float32 rounding making a few neighbours tie.
    np.testing.assert_allclose(rank_normalised(shifted), rank_normalised(images), atol=2e-3)
    x = preprocess(images)
    assert x.shape == (3, 1, 64, 64)
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    blank = np.zeros((2, 64, 64), dtype=np.float32)
    blank[1, :5] = 1.0  # one bright stripe: 92 % of the pixels still share one value
    with pytest.raises(ValueError, match=r"frames \[0, 1\] have no contrast"):
        preprocess(blank)


def test_declared_pixel_sizes_are_read_in_their_units_and_bad_ones_refused():
    assert declared_pixel_size({"shape": [256, 256]}, "camera_image") is None
    key = {"pixel_size": 40, "pixel_size_units": "nm"}
    assert declared_pixel_size(key, "camera_image") == pytest.approx(0.04)
    with pytest.raises(ValueError, match=r"pixel_size_units='px'; expected one of um"):
        declared_pixel_size({"pixel_size": 0.05, "pixel_size_units": "px"}, "camera_image")
    with pytest.raises(ValueError, match=r"'camera_image' declares pixel_size='0.05'; expected"):
        declared_pixel_size({"pixel_size": "0.05", "pixel_size_units": "um"}, "camera_image")


def test_the_shipped_model_meets_the_segmentation_targets_on_new_frames():
    report = evaluate(segmentation.NAME, n=12, seed=2024)
    metrics = report["metrics"]

    assert metrics["frame_shape"] == [256, 256] and metrics["n"] == 12
    assert metrics["mean_iou"] >= 0.90, metrics["iou"]
    assert min(metrics["iou"].values()) >= 0.85, metrics["iou"]
    assert metrics["fraction_error_pp_mean"] <= 1.0, metrics["fraction_error_pp"]


def test_a_detector_gain_and_gamma_change_barely_changes_the_phase_map(shipped):
    images, truth = frames(4, 256, seed=44)
    before = segment(shipped.net, images).mask
    after = segment(
        shipped.net, respond(images, np.full(4, 1.9), np.full(4, 0.08), np.full(4, 0.62))
    ).mask

    assert (after == before).mean() > 0.999
    assert mask_metrics(after, truth)["mean_iou"] > 0.88


def test_films_and_particles_are_told_by_shape_whichever_is_brighter(shipped):
    ious = {}
    for name, levels in {
        "films bright": (0.2, 0.5, 0.75, 0.6),
        "particles bright": (0.2, 0.75, 0.5, 0.6),
    }.items():
        images, truth = frames(4, 256, seed=45, imaging=Imaging.fixed(levels, n=4))
        ious[name] = mask_metrics(segment(shipped.net, images).mask, truth)["iou"]
    for name, iou in ious.items():
        assert iou["spheroidite"] > 0.8 and iou["gb_carbide"] > 0.8, (name, iou)


@pytest.mark.parametrize("pixel_size", [0.04, 0.065])
def test_frames_of_another_declared_pixel_size_are_resampled(shipped, pixel_size):
    images, truth = frames(3, 200, seed=46, pixel_size_um=pixel_size)
    result = segment(shipped.net, images, pixel_size_um=pixel_size)

    assert result.mask.shape == truth.shape == (3, 200, 200)
    np.testing.assert_allclose(result.fractions.sum(axis=1), 1.0)
    assert mask_metrics(result.mask, truth)["mean_iou"] > 0.8


def test_a_pixel_size_outside_the_resampled_range_is_refused(shipped):
    images, _ = frames(1, 64, seed=47)
    with pytest.raises(
        ValueError,
        match=r"declares pixel_size 0.2 um; the model was trained at 0.05 um and resamples "
        r"frames from 0.025 to 0.1 um only",
    ):
        segment(shipped.net, images, pixel_size_um=0.2)


def test_a_1024_frame_is_tiled_with_bounded_passes_and_matches_whole_frame_inference(shipped):
    images, truth = frames(1, 1024, seed=41)
    passes: list[tuple[int, ...]] = []
    hook = shipped.net.register_forward_pre_hook(lambda _, args: passes.append(args[0].shape))
    try:
        tiled = segment(shipped.net, images, uncertainty=True)
    finally:
        hook.remove()
    whole = segment(shipped.net, images, uncertainty=True, tile=1024)

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


def test_frames_of_other_sizes_are_padded_and_tiny_ones_refused(shipped):
    for size in (250, 90):
        images, truth = frames(2, size, seed=42)
        result = segment(shipped.net, images)
        assert result.mask.shape == (2, size, size)
        assert (result.mask == truth).mean() > 0.93, size
    with pytest.raises(ValueError, match=r"at least 16 rows and columns, got shape \(1, 8, 8\)"):
        segment(shipped.net, np.zeros((1, 8, 8), dtype=np.float32))


def test_the_uncertainty_is_higher_where_the_phase_map_is_wrong(shipped):
    images, truth = frames(4, 256, seed=43)
    temperature = shipped.card.extras["temperature"]
    result = segment(shipped.net, images, temperature=temperature, uncertainty=True)
    wrong = result.mask != truth
    assert wrong.any()
    assert result.uncertainty[wrong].mean() > 3 * result.uncertainty[~wrong].mean()
    assert result.uncertainty.min() >= 0.0 and result.uncertainty.max() <= 0.75


def test_evaluate_model_scores_frames_at_another_pixel_size(shipped):
    config = segmentation.frame_config(1, pixel_size_um=0.04)
    assert config.structure.pixel_size_um == 0.04
    assert replace(config.structure, pixel_size_um=0.05) == MicrostructureConfig()
    metrics = segmentation.frame_metrics(
        shipped.net, segmentation.held_out_frames(2, seed=7, n_specimens=1, pixel_size_um=0.04)
    )
    assert metrics["pixel_size_um"] == 0.04 and "pixel_ece" not in metrics
    assert metrics["frame_shape"] == [256, 256]
