"""spinwave_cnn and phase_cnn live in real scans: accurate on the simulated instruments."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest

from smartlab_plugins.devices import ins, mpb
from smartlab_plugins.models import phase, spinwave
from smartlab_plugins.results import find_analyses, read_array, read_errors, read_events


def analysis_of(client, uid, plugin):
    (analysis,) = find_analyses(client, run_uid=uid, plugin=plugin)
    return analysis


def test_spinwave_cnn_recovers_the_exchange_constants_live(RE, make_smartlab, client):
    spectrometer = ins.make_devices(seed=3)["ins"]
    truths = [(0.62, 0.11, 0.05), (0.95, 0.16, 0.09), (0.5, 0.08, 0.12)]
    smartlab = make_smartlab(plugins=["spinwave_cnn"])
    RE.subscribe(smartlab)

    def plan():
        for truth in truths:
            spectrometer.sample.set_truth(*truth)
            yield from bp.count([spectrometer], 1, md={"truth": truth})

    uids = RE(plan())
    smartlab.flush()

    for uid, truth in zip(uids, truths, strict=True):
        analysis = analysis_of(client, uid, "spinwave_cnn")
        assert analysis.metadata["model"] == "spinwave_cnn"
        assert analysis.metadata["model_version"] == spinwave.VERSION == "1.1.0"
        assert len(analysis.metadata["sha256"]) == 64
        units = analysis.metadata["units"]
        assert units["j1"] == units["j1_std"] == units["d_std"] == "meV"
        assert units["outside_training"] == ""
        row = read_events(analysis).iloc[0]
        for name, value in zip(("j1", "j2", "d"), truth, strict=True):
            assert row[name] == pytest.approx(value, rel=0.2), name  # one map, not a mean
            assert 0 < row[f"{name}_std"] < 0.5 * value


def test_phase_cnn_tells_the_phases_apart_across_a_composition_scan(RE, make_smartlab, client):
    devices = mpb.make_devices(seed=4)
    smartlab = make_smartlab(plugins=["phase_cnn"])
    RE.subscribe(smartlab)
    compositions = [0.1, 0.2, 0.3, 0.65, 0.8, 0.9]

    (uid,) = RE(bp.list_scan([devices["mpb"]], devices["sample"].x, compositions))
    smartlab.flush()

    analysis = analysis_of(client, uid, "phase_cnn")
    table = read_events(analysis)
    assert list(table["phase_name"]) == ["rhombohedral"] * 3 + ["tetragonal"] * 3
    columns = [c for c in table if c.startswith("p_")]
    assert {analysis.metadata["units"][c] for c in [*columns, "confidence"]} == {""}
    probabilities = table[columns].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (table["confidence"] > 0.9).all()
    # frames of the instrument it was trained on: like its training data (5 % flagged by design)
    assert analysis.metadata["units"]["ood_score"] == ""
    assert set(table["in_distribution"]) <= {0, 1} and table["in_distribution"].sum() >= 5
    assert (table["ood_score"] > 0).all()


def test_saliency_maps_are_published_beside_the_results(RE, make_smartlab, client):
    devices = mpb.make_devices(seed=5)
    smartlab = make_smartlab(plugins=["phase_cnn"])
    RE.subscribe(smartlab)
    (uid,) = RE(
        bp.list_scan([devices["mpb"]], devices["sample"].x, [0.2, 0.8]),
        smartlab={"options": {"phase_cnn": {"saliency": True}}},
    )
    smartlab.flush()
    saliency = read_array(analysis_of(client, uid, "phase_cnn"), "saliency")
    assert saliency.shape == (2, *phase.INPUT_SHAPE)  # over the integrated frame: chi x q
    assert saliency.max() == pytest.approx(1.0)
    image = np.asarray(client[uid]["primary"]["mpb_image"].read())
    profile = phase.preprocess(image[:1])[0, 0].mean(axis=0)
    rings = profile > np.percentile(profile, 90)
    # the decision rests on the rings, not on the empty q between them
    assert saliency[0].mean(axis=0)[rings].mean() > 2 * saliency[0].mean(axis=0)[~rings].mean()


def test_a_map_of_the_wrong_shape_is_refused_per_event_or_resampled_on_request(
    make_smartlab, client
):
    from event_model import compose_run

    def run_with_map(shape, options):
        run = compose_run(metadata={"smartlab": {"plugins": ["spinwave_cnn"], "options": options}})
        descriptor = run.compose_descriptor(
            name="primary",
            data_keys={"ins_sqw": {"source": "sim", "dtype": "array", "shape": list(shape)}},
        )
        maps = ins.simulate(2, seed=9).inputs["sqw"]
        from scipy.ndimage import zoom

        docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
        for i, full in enumerate(maps):
            data = zoom(full, [s / f for s, f in zip(shape, full.shape, strict=True)], order=1)
            docs.append(
                (
                    "event",
                    descriptor.compose_event(
                        data={"ins_sqw": data}, timestamps={"ins_sqw": 0.0}, seq_num=i + 1
                    ),
                )
            )
        docs.append(("stop", run.compose_stop()))
        return run.start_doc["uid"], docs

    smartlab = make_smartlab(plugins=[])
    refused_uid, refused = run_with_map((48, 80), {})
    resampled_uid, resampled = run_with_map((48, 80), {"spinwave_cnn": {"resample": True}})
    for name, doc in refused + resampled:
        smartlab(name, doc)
    smartlab.flush()

    errors = read_errors(analysis_of(client, refused_uid, "spinwave_cnn"))
    assert (
        "spinwave_cnn: expected 96x160 data in field 'ins_sqw', got 48x80"
        in errors["message"].iloc[0]
    )
    assert read_events(analysis_of(client, refused_uid, "spinwave_cnn")).empty
    assert len(read_events(analysis_of(client, resampled_uid, "spinwave_cnn"))) == 2


def test_maps_measured_away_from_the_training_conditions_are_flagged(
    RE, make_smartlab, client, caplog
):
    import logging

    spectrometer = ins.make_devices(seed=13)["ins"]
    smartlab = make_smartlab(plugins=["spinwave_cnn"])
    RE.subscribe(smartlab)
    with caplog.at_level(logging.WARNING, logger="smartlab_plugins"):
        (uid,) = RE(bp.list_scan([spectrometer], spectrometer.temperature, [5.0, 60.0]))
        smartlab.flush()
    table = read_events(analysis_of(client, uid, "spinwave_cnn"))
    assert list(table["outside_training"]) == [0, 1]
    assert "away from the model's training conditions (Ei 20.0 meV, T 5.0 K)" in caplog.text
