"""Transfer learning: a few examples of a shifted instrument adapt a shipped model."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import h5py
import numpy as np
import pytest

from smartlab_plugins.cases import simulate_case
from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.devices.ins import SpinWaveConfig
from smartlab_plugins.models import ood
from smartlab_plugins.models.finetune import DataSetError, finetune, load_examples, score
from smartlab_plugins.models.spinwave import SpinWaveTask
from smartlab_plugins.models.store import card_of, load_model

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
    # the card says what the tuning did to the original instrument's maps
    original = card.metrics["original_domain"]
    assert original["n"] > 0
    assert mean_relative_error(original["before"]) < 0.05  # the shipped model at home
    assert mean_relative_error(original["after"]) > mean_relative_error(original["before"])
    # the new instrument is the tuned model's domain: its flag is calibrated on the 50 maps
    assert card.extras["ood"]["n_fit"] + card.extras["ood"]["n_threshold"] == 50
    tuned_model = load_model("spinwave_cnn", tmp_path, device="cpu")
    flags = tuned_model.ood.flags(ood.features(tuned_model.net, test.x))
    assert flags["in_distribution"].mean() > 0.5


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


def test_a_set_of_another_instrument_is_refused_before_training(tmp_path):
    mpb = simulate_case("mpb", 2, seed=1, progress=False)
    with pytest.raises(DataSetError) as refused:
        finetune("spinwave_cnn", mpb, tmp_path, progress=False, data_label="mpb.h5")
    assert str(refused.value) == (
        "mpb.h5 holds 'mpb' data (inputs: mpb_image); spinwave_cnn is trained on 'ins' data: "
        "make one with `smartlab simulate ins --n 50 --out ins.h5`"
    )
    assert not list(tmp_path.iterdir())


def test_a_set_without_a_field_the_model_reads_names_the_field(tmp_path):
    made = simulate_case("ins", 4, seed=1, progress=False)
    made.inputs = {"counts": made.inputs["sqw"]}
    with pytest.raises(DataSetError, match=r"measured\.h5 has no field 'sqw', which spinwave_cnn"):
        finetune("spinwave_cnn", made, tmp_path, progress=False, data_label="measured.h5")


def test_too_few_examples_to_validate_on_are_refused(tmp_path):
    two = simulate_case("ins", 2, seed=1, progress=False)
    with pytest.raises(DataSetError, match=r"holds 2 example.*too few .* 10 to 100 are typical"):
        finetune("spinwave_cnn", two, tmp_path, progress=False)


def test_files_that_are_no_data_set_are_refused_with_what_they_are(tmp_path):
    with pytest.raises(DataSetError, match="no such file; make one with `smartlab simulate"):
        load_examples(tmp_path / "missing.h5", "phase_cnn")
    with pytest.raises(DataSetError, match="is a folder"):
        load_examples(tmp_path, "phase_cnn")
    (tmp_path / "table.csv").write_text("phase\n1\n")
    with pytest.raises(DataSetError, match=r"table\.csv is not an HDF5 file"):
        load_examples(tmp_path / "table.csv", "phase_cnn")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("inputs")
        f.attrs["case"] = "mpb"
    with pytest.raises(DataSetError, match=r"not a SmartLab data set .*no group 'labels'"):
        load_examples(tmp_path / "other.h5", "phase_cnn")
    simulate_case("mpb", 2, seed=1, progress=False).save(tmp_path / "mpb.h5")
    assert len(load_examples(tmp_path / "mpb.h5", "phase_cnn")) == 2
