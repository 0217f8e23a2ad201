"""transition_lstm's model: causal steps, the flag rule, the baselines, and the accuracy targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smartlab_plugins.models import transition
from smartlab_plugins.models.cards import ModelCard
from smartlab_plugins.models.evaluate import evaluate
from smartlab_plugins.models.nets import TransitionNet
from smartlab_plugins.models.store import load_model
from smartlab_plugins.models.training import TrainingConfig, train_model
from smartlab_plugins.models.transition import (
    FlagRule,
    TransitionTask,
    cusum_flags,
    first_flags,
    onset_temperature,
    presence_flags,
)


def train_tiny(out: Path) -> ModelCard:
    """600 ramps, 8 epochs on one thread: about 20 s."""
    config = TrainingConfig(
        n_samples=600,
        seed=3,
        batch_size=16,
        learning_rate=3e-3,
        max_epochs=8,
        max_minutes=1.0,
        threads=1,
    )
    return train_model(TransitionTask(), config, out, progress=False)


def test_a_tiny_lstm_learns_to_flag_onsets_and_writes_a_complete_card(tmp_path):
    threads = torch.get_num_threads()
    card = train_tiny(tmp_path)

    assert torch.get_num_threads() == threads  # trained on one thread, then restored
    lstm = card.metrics["lstm"]  # the test split: 60 ramps never trained on
    assert lstm["all"]["n_transition"] + lstm["all"]["n_no_transition"] == 60
    assert lstm["all"]["detection_within_2"] >= 0.85, lstm["all"]
    assert lstm["all"]["false_alarm_rate"] <= 0.1
    assert lstm["heating"]["n_transition"] > 0 and lstm["cooling"]["n_transition"] > 0
    assert card.metrics["onset_temperature"]["mean_abs_error_K"] < 3.0
    assert set(card.metrics) >= {"cusum", "presence_rule", "frame_accuracy"}
    assert 0.05 <= card.extras["threshold"] <= 0.95
    assert card.extras["consecutive"] in transition.CONSECUTIVE
    assert card.extras["onset_std_steps"] > 0
    assert card.architecture["class"] == "TransitionNet"
    assert card.data["case"] == "operando" and card.data["generator_seed"] == 3
    assert (tmp_path / "transition_lstm_curves.png").stat().st_size > 1000
    assert load_model(transition.NAME, tmp_path, device="cpu").card.sha256 == card.sha256


def test_stepping_frame_by_frame_gives_the_whole_ramp_answer_and_never_looks_ahead():
    torch.manual_seed(0)
    net = TransitionNet().eval()
    ramps = torch.randn(2, 12, transition.INPUT_POINTS)
    with torch.no_grad():
        whole = net(ramps)
        state, stepped = None, []
        for t in range(ramps.shape[1]):
            logit, state = net.step(ramps[:, t], state)
            stepped.append(logit)
        changed = ramps.clone()
        changed[:, 7:] = torch.randn(2, 5, transition.INPUT_POINTS)
        after_change = net(changed)

    torch.testing.assert_close(torch.stack(stepped, dim=1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after_change[:, :7], whole[:, :7])
    assert not torch.allclose(after_change[:, 7:], whole[:, 7:])


def test_the_flag_rule_raises_once_and_interpolates_the_onset_between_frames():
    rule = FlagRule(threshold=0.6, consecutive=2, onset_std_steps=0.3)
    p = [0.1, 0.2, 0.7, 0.8, 0.9, 0.1, 0.9, 0.95]
    temperatures = [400.0 + 2.0 * i for i in range(len(p))]

    raised = [rule.update(pi, ti) for pi, ti in zip(p, temperatures, strict=True)]

    assert [i for i, onset in enumerate(raised) if onset] == [3]
    onset = raised[3]
    assert onset.temperature == pytest.approx(402.0 + 2.0 * (0.5 - 0.2) / (0.7 - 0.2))
    assert onset.std == pytest.approx(0.3 * 2.0)
    assert first_flags(np.array([p]), 0.6, 2).tolist() == [3]


def test_the_flag_rule_online_agrees_with_the_whole_ramp_rule():
    rng = np.random.default_rng(5)
    p = np.clip(np.cumsum(rng.normal(0.0, 0.15, (50, 30)), axis=1), 0.0, 1.0)
    for threshold, consecutive in ((0.5, 1), (0.7, 2), (0.9, 3)):
        whole = first_flags(p, threshold, consecutive)
        for i, ramp in enumerate(p):
            rule = FlagRule(threshold, consecutive, 0.5)
            raised = [t for t, value in enumerate(ramp) if rule.update(float(value), float(t))]
            assert raised == ([whole[i]] if whole[i] >= 0 else [])


def test_onset_interpolation_is_clipped_to_its_two_frames():
    assert onset_temperature(0.2, 0.8, 400.0, 402.0) == pytest.approx(401.0)
    assert onset_temperature(0.6, 0.9, 400.0, 402.0) == 400.0  # already above 0.5
    assert onset_temperature(0.1, 0.3, 400.0, 402.0) == 402.0  # 0.5 not reached
    assert onset_temperature(0.9, 0.8, 400.0, 398.0) == 398.0  # p fell: the flag frame


def test_the_baselines_flag_a_step_in_the_superlattice_feature():
    z = np.zeros((3, 40))
    z[0, 20:] = 50.0  # the line appears at frame 20
    z[1, :25] = 50.0  # it vanishes at frame 25
    # z[2]: nothing happens
    assert presence_flags(z).tolist() == [20, 25, -1]
    assert cusum_flags(z, drift=5.0, threshold=40.0).tolist() == [20, 25, -1]
    assert cusum_flags(z, drift=5.0, threshold=100.0).tolist() == [22, 27, -1]


def test_the_shipped_model_meets_the_detection_targets_on_new_ramps():
    report = evaluate(transition.NAME, n=800, seed=2024)
    lstm = report["metrics"]["lstm"]

    assert lstm["all"]["n_no_transition"] > 150
    for direction in ("heating", "cooling"):
        assert lstm[direction]["detection_within_2"] >= 0.95, (direction, lstm[direction])
    assert lstm["all"]["false_alarm_rate"] < 0.01
    onset = report["metrics"]["onset_temperature"]
    assert onset["mean_abs_error_K"] < 2.0 and onset["mean_std_K"] < 2.0
    # the generic change-point test on the superlattice line does far worse
    assert report["metrics"]["cusum"]["all"]["detection_within_2"] < 0.5
