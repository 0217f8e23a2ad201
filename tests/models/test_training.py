"""The shared training layer: tiny models learn, cards are complete, shipped claims hold."""

from __future__ import annotations

import json

import pytest

from smartlab_plugins.models.baselines import BASELINES
from smartlab_plugins.models.evaluate import evaluate
from smartlab_plugins.models.phase import PhaseTask
from smartlab_plugins.models.registry import BASELINE_NAMES, TASKS, training_config
from smartlab_plugins.models.spinwave import SpinWaveTask
from smartlab_plugins.models.store import card_of, load_model
from smartlab_plugins.models.training import TrainingConfig, train_model
from smartlab_plugins.settings import ConfigurationError


def test_a_tiny_spinwave_cnn_learns_and_writes_a_complete_card(tmp_path):
    config = TrainingConfig(n_samples=1000, max_epochs=8, max_minutes=1.5, seed=3)
    card = train_model(SpinWaveTask(), config, tmp_path, progress=False)

    assert card.metrics["j1"]["relative_mae"] < 0.10  # held-out test split, 100 maps
    assert card.data["generator_seed"] == 3
    assert card.data["sizes"] == {"train": 800, "validation": 100, "test": 100}
    assert card.data["generator_config"]["ei"] == 20.0
    assert card.training["epochs_run"] >= 1 and card.training["optimizer"] == "Adam"
    assert card.preprocessing["steps"][0] == "log1p(counts)"
    assert (tmp_path / "spinwave_cnn_curves.png").stat().st_size > 1000
    stored = json.loads((tmp_path / "spinwave_cnn.json").read_text())
    assert stored["sha256"] == card.sha256
    assert load_model("spinwave_cnn", tmp_path, device="cpu").card.sha256 == card.sha256


def test_a_tiny_phase_cnn_learns_the_phases_away_from_the_boundary(tmp_path):
    config = TrainingConfig(n_samples=1000, max_epochs=6, max_minutes=1.5, seed=4)
    card = train_model(PhaseTask(), config, tmp_path, progress=False)
    # five classes (chance 0.2; the largest class ~0.35): the shipped model, trained
    # 16 epochs on 10 times the frames, reaches 1.0
    assert card.metrics["accuracy_away_from_boundary"] > 0.75
    assert 0.2 < card.extras["temperature"] < 5.0


def test_the_shipped_spinwave_cnn_meets_its_accuracy_target_on_new_data():
    report = evaluate("spinwave_cnn", n=300, seed=2024)
    for name in ("j1", "j2", "d"):
        assert report["metrics"][name]["relative_mae"] <= 0.05, name
        assert 0.55 <= report["metrics"][name]["coverage_68"] <= 0.8, name


def test_the_shipped_phase_cnn_meets_its_accuracy_target_on_new_data():
    report = evaluate("phase_cnn", n=400, seed=2024)
    metrics = report["metrics"]
    assert metrics["n_away_from_boundary"] > 100
    assert metrics["accuracy_away_from_boundary"] >= 0.99
    assert metrics["expected_calibration_error"] < 0.05
    # every class is met away from the boundaries, the cubic phase above T_C included
    assert set(metrics["accuracy_away_by_class"]) >= {"rhombohedral", "tetragonal", "cubic"}
    assert min(metrics["accuracy_away_by_class"].values()) >= 0.95


def test_evaluate_refuses_the_training_seed():
    with pytest.raises(ConfigurationError, match="generated spinwave_cnn's training data"):
        evaluate("spinwave_cnn", n=10, seed=0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_smartlab_train_defaults_are_the_settings_the_shipped_weights_were_trained_with(name):
    config, trained = training_config(name), card_of(name).training
    for setting in ("n_samples", "seed", "batch_size", "learning_rate", "max_epochs", "patience"):
        assert getattr(config, setting) == trained[setting], setting
    assert training_config(name, n_samples=50, seed=None).n_samples == 50


def test_the_command_line_lists_the_baselines_without_importing_them():
    assert set(BASELINE_NAMES) == set(BASELINES)
