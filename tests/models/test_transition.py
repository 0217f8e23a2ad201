"""transition_lstm's model: causal steps, the flag rule, the baselines, and the accuracy targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smartlab_plugins.devices import operando
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
    is_blank,
    onset_temperature,
    preprocess,
    presence_flags,
    superlattice_position,
)

SECOND_ORDER_MISSED = 0.05  # a second-order onset is seen late, not never


def train_tiny(out: Path) -> ModelCard:
    """400 ramps, 10 epochs on one thread: about 25 s."""
    config = TrainingConfig(
        n_samples=400,
        seed=3,
        batch_size=8,
        learning_rate=3e-3,
        max_epochs=10,
        max_minutes=1.0,
        threads=1,
    )
    return train_model(TransitionTask(), config, out, progress=False)


def test_a_tiny_lstm_starts_learning_and_writes_a_complete_card(tmp_path):
    """A weak line takes a few hundred steps to find: the loss falls; the targets are the
    shipped model's (the test below), trained on 8,000 ramps."""
    threads = torch.get_num_threads()
    card = train_tiny(tmp_path)

    assert torch.get_num_threads() == threads  # trained on one thread, then restored
    val_loss = card.extras["history"]["val_loss"]
    assert min(val_loss) < 0.85 * val_loss[0], val_loss
    lstm = card.metrics["lstm"]  # the test split: 40 ramps never trained on
    assert lstm["all"]["n_transition"] + lstm["all"]["n_no_transition"] == 40
    assert set(lstm) >= {"heating", "cooling", "first_order", "tricritical", "second_order"}
    assert set(card.metrics) >= {"cusum", "presence_rule", "frame_accuracy", "onset_temperature"}
    assert 0.05 <= card.extras["threshold"] <= 0.95
    assert card.extras["consecutive"] in transition.CONSECUTIVE
    assert card.extras["onset_std_steps"] > 0
    assert card.architecture["class"] == "TransitionNet"
    assert card.architecture["params"]["points"] == transition.INPUT_POINTS
    assert card.preprocessing["scope"]["materials"] == [m.name for m in operando.MATERIALS]
    assert card.data["case"] == "operando" and card.data["generator_seed"] == 3
    assert (tmp_path / "transition_lstm_curves.png").stat().st_size > 1000
    assert load_model(transition.NAME, tmp_path, device="cpu").card.sha256 == card.sha256


def test_stepping_frame_by_frame_gives_the_whole_ramp_answer_and_never_looks_ahead():
    torch.manual_seed(0)
    net = TransitionNet(points=transition.INPUT_POINTS).eval()
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
    """On 400 ramps of seeds it never saw: first-order and tricritical onsets within 2 frames."""
    report = evaluate(transition.NAME, n=400, seed=2024)
    lstm = report["metrics"]["lstm"]

    assert lstm["all"]["n_no_transition"] > 80
    assert lstm["all"]["false_alarm_rate"] < 0.01
    for kind in ("first_order", "tricritical"):
        assert lstm[kind]["n_transition"] > 50, kind
        assert lstm[kind]["detection_within_2"] >= 0.95, (kind, lstm[kind])
        assert lstm[kind]["early_flag_rate"] <= 0.02, (kind, lstm[kind])
    # a second-order line is mostly below the noise 2 frames past T_c: it is flagged, later
    assert lstm["second_order"]["missed_rate"] <= SECOND_ORDER_MISSED
    assert lstm["second_order"]["detection_within_2"] >= 0.55  # 70 % on 1,000 ramps
    onset = report["metrics"]["onset_temperature"]
    assert onset["mean_abs_error_K"] < 2.0 and onset["mean_std_K"] < 3.0
    # the generic change-point test on the superlattice line does far worse
    assert report["metrics"]["cusum"]["all"]["detection_within_2"] < 0.5


def test_the_hand_rule_finds_the_superlattice_line_of_every_material():
    config = operando.OperandoConfig(exposure_substeps=1)
    grid = operando.two_theta_grid(config)
    for index, material in enumerate(operando.MATERIALS):
        values = dict(
            kind=1, t_c=450.0, hysteresis=0.0, supercooling=np.nan, coexistence=0.0,
            material=index, tilt_system=0, tilt0=6.0, strain_coupling=0.4,
            lattice=material.lattice, expansion=0.0, scale=1.0,
        )  # fmt: skip
        sample = operando.SampleParameters(**{k: np.array([v]) for k, v in values.items()})
        pattern = operando.expected_pattern(
            grid, np.array([[300.0]]), np.ones((1, 1)), sample, config
        )
        expected = 2 * np.degrees(np.arcsin(1.54056 * np.sqrt(11) / (4 * material.lattice)))
        assert superlattice_position(pattern[0], grid) == pytest.approx(expected, abs=0.1)


def test_preprocessing_shows_a_weak_line_in_noise_units_and_blank_frames_are_blank():
    grid = np.linspace(15.0, 55.0, 512)
    rng = np.random.default_rng(0)
    background = np.full(512, 200.0)
    strong = 3e5 * np.exp(-0.5 * ((grid - 32.0) / 0.085) ** 2) * (grid[1] - grid[0]) / 0.213
    weak = 1e-3 * strong.sum() * np.exp(-0.5 * ((grid - 38.0) / 0.085) ** 2) / 2.6
    plain = preprocess(rng.poisson(background + strong).astype(np.float32))
    lined = preprocess(rng.poisson(background + strong + weak).astype(np.float32))
    point = int(np.argmin(np.abs(grid - 38.0)) // transition.POOL)
    noise = np.std(plain[:40])
    assert (lined[point] - plain[point]) > 5 * noise  # a 0.1 % line stands out of the noise
    assert plain.max() < 4.0  # the strongest line, thousands of sigmas, is compressed
    assert is_blank(np.zeros(512)) and is_blank(np.full(512, 3.0))
    assert not is_blank(rng.poisson(background))
