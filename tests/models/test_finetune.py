"""Transfer learning: a few examples of a shifted instrument adapt a shipped model."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.devices.ins import SpinWaveConfig
from smartlab_plugins.models.finetune import finetune, score
from smartlab_plugins.models.spinwave import SpinWaveTask
from smartlab_plugins.models.store import card_of
from smartlab_plugins.simulate import simulate_case

SHIFTED = replace(SpinWaveConfig(), resolution_fraction=0.06, background_rate=0.1)


def mean_relative_error(metrics: dict) -> float:
    return float(np.mean([metrics[p]["relative_mae"] for p in ("j1", "j2", "d")]))


def test_fine_tuning_on_50_shifted_maps_beats_the_unadapted_model(tmp_path):
    small = simulate_case("ins", 50, seed=601, config=SHIFTED, progress=False)
    test = SpinWaveTask().from_set(
        simulate_case("ins", 200, seed=602, config=SHIFTED, progress=False)
    )

    card = finetune("spinwave_cnn", small, tmp_path, progress=False, data_label="shifted")

    assert card.training["finetuned_from"]["sha256"] == card_of("spinwave_cnn").sha256
    assert card.data["generator_config"]["resolution_fraction"] == 0.06
    unadapted = mean_relative_error(score("spinwave_cnn", None, test))
    tuned = mean_relative_error(score("spinwave_cnn", tmp_path, test))
    assert tuned < 0.8 * unadapted, (tuned, unadapted)


def test_the_command_line_writes_a_shifted_set_and_tunes_on_it(tmp_path):
    data = tmp_path / "shifted.h5"

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "smartlab_plugins.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    made = cli(
        "simulate",
        "ins",
        "--n",
        "20",
        "--seed",
        "7",
        "--out",
        str(data),
        "--set",
        "resolution_fraction=0.06",
        "--set",
        "background_rate=0.1",
    )
    assert made.returncode == 0, made.stderr
    assert SimulatedSet.load(data).config["resolution_fraction"] == 0.06
    tuned = cli("finetune", "spinwave_cnn", str(data), "--out", str(tmp_path / "tuned"))
    assert tuned.returncode == 0, tuned.stderr
    assert (tmp_path / "tuned" / "spinwave_cnn.json").exists()
    wrong = cli("simulate", "ins", "--n", "2", "--out", str(data), "--set", "resolution=1")
    assert wrong.returncode == 2 and "SpinWaveConfig has no setting 'resolution'" in wrong.stderr
