"""Out-of-distribution flags: garbage and shifted instruments are told from the training domain.

The shipped models' statistics are scored on sets simulated here from seeds
neither their training, their calibration nor ``smartlab evaluate`` used; the
thresholds are the issue's targets (AUROC >= 0.95; at most ~20 % of valid
inputs flagged; 68 % intervals covering 60-80 %; confident-wrong answers at
most 1 % of the events left unflagged). Shifts that miss a target are in
docs/models/ood.md, with the figures, not here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from smartlab_plugins.models import ood
from smartlab_plugins.models.shifts import SHIFTS, evaluate_shift
from smartlab_plugins.models.store import ModelIntegrityError, load_model, shipped_dir

SEED = 4242  # new to every model: training 0, evaluate 1000, calibration 3000

#: (model, shift, n): shifts whose sets are told apart at AUROC >= 0.95.
TOLD_APART = [
    *(("spinwave_cnn", shift, 150) for shift in SHIFTS["spinwave_cnn"]),
    *(
        ("phase_cnn", shift, 150)
        for shift in ("detector_distance", "counting_time", "background", "noise")
    ),
    *(
        ("transition_lstm", shift, 60)
        for shift in ("background", "zeros", "constant", "negated", "noise")
    ),
    ("micrograph_unet", "noise", 40),
]
#: (model, shift): garbage refused with a per-event error before the network sees it.
REFUSED = [
    ("phase_cnn", "zeros"),
    ("phase_cnn", "constant"),
    ("micrograph_unet", "zeros"),
    ("micrograph_unet", "constant"),
]


@pytest.fixture(scope="module")
def models():
    return {}


def model_named(models: dict, name: str):
    if name not in models:
        models[name] = load_model(name, device="cpu")
    return models[name]


@pytest.mark.parametrize(
    ("name", "shift", "n"), TOLD_APART, ids=[f"{m}-{s}" for m, s, _ in TOLD_APART]
)
def test_a_shifted_instrument_or_garbage_is_flagged(models, name: str, shift: str, n: int) -> None:
    report = evaluate_shift(name, shift, n, SEED, model_named(models, name))

    assert report["ood"]["auroc"] >= 0.95, report["ood"]
    assert report["ood"]["flagged_shifted_set"] >= 0.8, report["ood"]
    assert report["ood"]["flagged_in_distribution_set"] <= 0.2, report["ood"]
    if "confident_wrong" in report["honesty"]["shifted_set"]:
        left = report["honesty"]["shifted_set"]["confident_wrong"]["unflagged"]
        assert left is None or left <= 0.01, report["honesty"]


@pytest.mark.parametrize(("name", "shift"), REFUSED, ids=[f"{m}-{s}" for m, s in REFUSED])
def test_garbage_without_contrast_is_refused_with_a_reason(models, name: str, shift: str) -> None:
    report = evaluate_shift(name, shift, 8, SEED, model_named(models, name))

    assert "refused" in report, report
    assert "contrast" in report["refused"] or "nothing to classify" in report["refused"]


def test_spinwave_intervals_cover_60_to_80_percent_in_distribution_and_shifts_are_flagged(
    models,
) -> None:
    report = evaluate_shift(
        "spinwave_cnn", "resolution", 400, SEED, model_named(models, "spinwave_cnn")
    )

    for constant in ("j1", "j2", "d"):
        inside = report["honesty"]["in_distribution_set"][f"in_68_interval_{constant}"]
        assert 0.6 <= inside["unflagged"] <= 0.8, (constant, inside)
        shifted = report["honesty"]["shifted_set"][f"in_68_interval_{constant}"]
        assert shifted["all"] < 0.5  # the intervals are not honest on this shift ...
    assert report["ood"]["flagged_shifted_set"] == 1.0  # ... and every one of its maps is flagged


def test_a_nan_input_scores_infinite_and_is_flagged(models) -> None:
    model = model_named(models, "spinwave_cnn")
    x = np.full((2, 1, 48, 80), np.nan, dtype=np.float32)

    flags = model.ood.flags(ood.features(model.net, x))

    assert np.isinf(flags["ood_score"]).all() and (flags["in_distribution"] == 0).all()


@pytest.mark.parametrize(("name", "shape"), [("phase_cnn", (12, 336)), ("spinwave_cnn", (48, 80))])
def test_one_forward_pass_gives_the_outputs_and_the_calibrated_features(
    models, name: str, shape: tuple[int, int]
) -> None:
    model = model_named(models, name)
    x = np.random.default_rng(5).random((5, 1, *shape), dtype=np.float32)

    output, feats = model.run_with_features(x)

    np.testing.assert_allclose(output.numpy(), model.run(x).numpy(), rtol=1e-5, atol=1e-5)
    alone = ood.features(model.net, x)
    assert feats is not None and feats.keys() == alone.keys()
    for group in alone:
        np.testing.assert_allclose(feats[group], alone[group], rtol=1e-6, atol=1e-9)
    output += 1.0  # an ordinary tensor: the plugin may scale it in place


def copy_of_shipped(tmp_path: Path, name: str) -> Path:
    for suffix in (".pt", ".json", ".ood.npz"):
        shutil.copy(shipped_dir() / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path


def test_statistics_that_do_not_match_the_card_are_refused(tmp_path: Path) -> None:
    directory = copy_of_shipped(tmp_path, "phase_cnn")
    stats = directory / "phase_cnn.ood.npz"
    data = bytearray(stats.read_bytes())
    data[-100] ^= 0xFF
    stats.write_bytes(bytes(data))

    with pytest.raises(ModelIntegrityError, match=r"phase_cnn\.ood\.npz: its SHA-256 is"):
        load_model("phase_cnn", directory, device="cpu")


def test_calibration_writes_statistics_the_card_checks(tmp_path: Path) -> None:
    directory = copy_of_shipped(tmp_path, "transition_lstm")
    before = load_model("transition_lstm", directory, device="cpu").ood

    info = ood.calibrate_model("transition_lstm", directory, n=40, seed=SEED)

    after = load_model("transition_lstm", directory, device="cpu").ood
    assert info["n_fit"] + info["n_threshold"] == 40 * 64  # frames of 40 ramps
    assert info["sha256"] == ood.sha256_of(directory / "transition_lstm.ood.npz")
    assert list(after.groups) == list(before.groups) == ["input", *ood.TAPS["TransitionNet"]]
    assert after.threshold != before.threshold
    with pytest.raises(ValueError, match="generated transition_lstm's training data"):
        ood.calibrate_model("transition_lstm", directory, n=40, seed=0)


def test_the_score_is_the_mean_of_the_groups_and_older_files_keep_their_rule(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    fit_part = {"a": rng.normal(size=(200, 3)), "b": rng.normal(size=(200, 2))}
    held_out = {"a": rng.normal(size=(100, 3)), "b": rng.normal(size=(100, 2))}
    model = ood.fit(fit_part, held_out, 0.95)
    probe = {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=(5, 2)) + 3.0}
    by_group = np.array([model.groups[g].score(probe[g]) for g in ("a", "b")])
    assert model.combine == "mean"
    np.testing.assert_allclose(model.score(probe), by_group.mean(axis=0))

    saved = tmp_path / "m.ood.npz"
    model.save(saved)
    assert ood.OODModel._read(saved).combine == "mean"
    with np.load(saved, allow_pickle=False) as stored:  # as written before the rule was stored
        older = {key: stored[key] for key in stored.files if key != "combine"}
    np.savez(tmp_path / "old.ood.npz", **older)
    old = ood.OODModel._read(tmp_path / "old.ood.npz")
    assert old.combine == "max"  # its threshold was set on the largest group's score
    np.testing.assert_allclose(old.score(probe), by_group.max(axis=0))


def test_two_threads_scoring_with_one_network_each_get_their_own_features(models) -> None:
    """The plugins of a worker share a network (spinwave_cnn and spinwave_baselines); each
    thread's features must come from its own forward pass, even when both are inside one."""
    import threading

    model = model_named(models, "spinwave_cnn")
    net = model.net
    from smartlab_plugins.models import spinwave

    inputs = [  # maps of counts, as the network takes them; batches of 3 and 5
        spinwave.preprocess(np.random.default_rng(seed).poisson(5.0, size=(n, 96, 160)) * 1.0)
        for seed, n in ((1, 3), (2, 5))
    ]
    alone = [ood.features(net, x) for x in inputs]
    modules = dict(net.named_modules())
    first, last = ood.TAPS["SpinWaveNet"][0], ood.TAPS["SpinWaveNet"][-1]
    started, finished = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)

    def wait_for_both(barrier: threading.Barrier) -> Callable[..., None]:
        def hook(*_: object) -> None:  # returns None: the layer's input and output unchanged
            barrier.wait()

        return hook

    # both threads are inside their forward pass, hooks on, before either goes on or reads
    hooks = [
        modules[first].register_forward_pre_hook(wait_for_both(started)),
        modules[last].register_forward_hook(wait_for_both(finished)),
    ]
    together: list = [None, None]

    def score(i: int) -> None:
        together[i] = ood.features(net, inputs[i])

    try:
        threads = [threading.Thread(target=score, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for hook in hooks:
            hook.remove()
    for mine, reference in zip(together, alone, strict=True):
        assert mine is not None
        for group, values in reference.items():
            np.testing.assert_allclose(mine[group], values, rtol=1e-5, atol=1e-6, err_msg=group)
