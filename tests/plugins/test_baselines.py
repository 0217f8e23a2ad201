"""The classical baselines: shipped small, loaded safely, answering beside the CNNs live."""

from __future__ import annotations

import json
import shutil

import bluesky.plans as bp
import numpy as np
import pytest

from smartlab_plugins.devices import ins, mpb
from smartlab_plugins.models.baselines import load_baselines
from smartlab_plugins.models.cards import ModelIntegrityError
from smartlab_plugins.models.store import shipped_dir
from smartlab_plugins.results import find_analyses, read_events


@pytest.mark.parametrize("name", ["spinwave_baselines", "phase_baselines"])
def test_baselines_are_small_and_their_cards_compare_them_on_the_cnn_split(name):
    card = json.loads((shipped_dir() / f"{name}.json").read_text())
    cnn = json.loads((shipped_dir() / f"{card['compared_with']}.json").read_text())
    assert card["data"]["generator_seed"] == cnn["data"]["generator_seed"]
    assert card["data"]["sizes"]["test"] == cnn["data"]["sizes"]["test"]
    assert set(card["models"]) == {"rf", "gb", "svm"}
    for entry in card["models"].values():
        assert (shipped_dir() / entry["file"]).stat().st_size < 5_000_000


def test_a_baseline_file_that_does_not_match_its_card_is_refused(tmp_path):
    for path in shipped_dir().glob("phase_baselines*"):
        shutil.copy(path, tmp_path)
    (tmp_path / "phase_baselines_svm.skops").write_bytes(b"not a model")
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        load_baselines("phase_baselines", tmp_path)


def test_spinwave_baselines_answer_beside_the_cnn(RE, make_smartlab, client):
    spectrometer = ins.make_devices(seed=8)["ins"]
    spectrometer.sample.set_truth(0.7, 0.12, 0.07)
    smartlab = make_smartlab(plugins=["spinwave_baselines", "spinwave_cnn"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.count([spectrometer], 2))
    smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=uid, plugin="spinwave_baselines")
    table = read_events(analysis)
    for kind in ("rf", "gb", "svm"):
        assert table[f"{kind}_j1"].to_numpy() == pytest.approx(0.7, rel=0.1), kind
        assert analysis.metadata["units"][f"{kind}_j1"] == "meV"
    (cnn,) = find_analyses(client, run_uid=uid, plugin="spinwave_cnn")
    # the flag is the CNN's for the same map: the baselines learned the same instrument
    beside = read_events(cnn)
    np.testing.assert_allclose(table["ood_score"], beside["ood_score"], rtol=1e-6)
    assert list(table["in_distribution"]) == list(beside["in_distribution"])


def test_phase_baselines_name_the_phases(RE, make_smartlab, client):
    devices = mpb.make_devices(seed=9)
    smartlab = make_smartlab(plugins=["phase_baselines"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.list_scan([devices["mpb"]], devices["sample"].x, [0.15, 0.85]))
    smartlab.flush()
    table = read_events(find_analyses(client, run_uid=uid, plugin="phase_baselines")[0])
    for kind in ("rf", "gb", "svm"):
        assert list(table[f"{kind}_phase_name"]) == ["rhombohedral", "tetragonal"], kind
