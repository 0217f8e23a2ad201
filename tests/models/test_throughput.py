"""The throughput harness times each model plugin's path against its bare network."""

from __future__ import annotations

import pytest

from smartlab_plugins.cases import simulate_case
from smartlab_plugins.models import phase, segmentation, spinwave
from smartlab_plugins.models.throughput import ThroughputCase, measure_throughput
from smartlab_plugins.plugins import micrograph_unet, phase_cnn, spinwave_cnn


def cases() -> dict[str, ThroughputCase]:
    frames = segmentation.held_out_frames(2, seed=7, n_specimens=1).inputs["images"]
    return {
        "spinwave_cnn": ThroughputCase(
            spinwave_cnn, simulate_case("ins", 2, seed=5).inputs["sqw"], spinwave.preprocess
        ),
        "phase_cnn": ThroughputCase(
            phase_cnn, simulate_case("mpb", 2, seed=5).inputs["mpb_image"], phase.preprocess
        ),
        "micrograph_unet": ThroughputCase(micrograph_unet, frames, segmentation.preprocess),
    }


@pytest.mark.parametrize("name", ["spinwave_cnn", "phase_cnn", "micrograph_unet"])
def test_each_model_plugin_is_timed_beside_its_bare_forward_pass(name):
    rows = measure_throughput(cases()[name], batch_sizes=(1, 2), repeats=2)

    assert [row["batch"] for row in rows] == [1, 2]
    for row in rows:
        assert row["plugin_frames_per_s"] > 0 and row["bare_frames_per_s"] > 0
        assert row["ratio"] > 0.05, row  # not 20 times slower than its network: a regression guard


def test_a_batch_larger_than_the_examples_is_refused():
    with pytest.raises(ValueError, match="phase_cnn: 2 example inputs, the largest batch is 8"):
        measure_throughput(cases()["phase_cnn"], batch_sizes=(8,))
