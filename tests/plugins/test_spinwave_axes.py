"""spinwave_cnn reads a map by its declared axes (issue 20): other grids, refusals, no axes."""

from __future__ import annotations

import logging

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import DocumentNames, compose_run, schema_validators

from smartlab_plugins.devices import ins
from smartlab_plugins.models import spinwave
from smartlab_plugins.models.inference import resampled
from smartlab_plugins.models.store import shared_model
from smartlab_plugins.results import find_analyses, read_errors, read_events

#: Same bin widths as the training grid, another range, centres half a bin off on both axes.
SHIFTED = ins.SpinWaveConfig(
    q_min=0.2859375, q_max=3.0984375, n_q=100, e_min=0.15, e_max=20.15, n_e=200
)
#: Energy up to 20.2 meV in the training grid's bins (the case that resample got wrong).
WIDER = ins.SpinWaveConfig(e_max=20.2, n_e=200)
#: Energy only up to 12.2 meV: the training range (to 16.2 meV) is not covered.
SHORT = ins.SpinWaveConfig(e_max=12.2, n_e=120)
#: Energy bins twice as wide: covered, but coarser than the training grid.
COARSE = ins.SpinWaveConfig(n_e=80)


def axes_of(config: ins.SpinWaveConfig) -> dict[str, np.ndarray]:
    return {"q": ins.q_axis(config), "energy": ins.energy_axis(config)}


def relative_errors(maps: np.ndarray, truth: np.ndarray) -> np.ndarray:
    model, task = shared_model("spinwave_cnn"), spinwave.SpinWaveTask()
    mean, _ = task.interpret(model.run(spinwave.preprocess(maps)), model.card.extras)
    return np.mean(np.abs(mean - truth) / truth, axis=0)


def test_maps_on_other_grids_mapped_by_their_axes_match_the_default_grid_accuracy():
    base = ins.simulate(64, seed=21)
    truth = np.stack([base.labels[p] for p in spinwave.PARAMETERS], axis=1)
    target = spinwave.training_axes()
    default = relative_errors(base.inputs["sqw"], truth)  # about 1.0 / 2.7 / 1.7 %
    for config, factor in ((WIDER, 1.2), (SHIFTED, 2.5)):
        other = ins.simulate(64, seed=21, config=config)  # the same truths, another grid
        plan = spinwave.plan_regrid(axes_of(config), spinwave.AXES, target, "ins_sqw")
        assert plan.partial == [] and not plan.identity
        mapped = relative_errors(plan.apply(other.inputs["sqw"]), truth)
        np.testing.assert_array_less(mapped, factor * default + 0.005)
        # stretching the map without its axes is what the coords replace: ~20% off in J1
        assert relative_errors(resampled(other.inputs["sqw"], (96, 160)), truth)[0] > 0.1


def test_declared_axes_are_read_in_their_units_and_order_and_checked():
    shape = (96, 160)
    key = ins.map_axes(ins.SpinWaveConfig())
    axes, dims = spinwave.declared_axes(key, "ins_sqw", shape)
    assert dims == ("q", "energy")
    plan = spinwave.plan_regrid(axes, dims, spinwave.training_axes(), "ins_sqw")
    assert plan.identity and plan.partial == []
    maps = np.random.default_rng(0).poisson(5.0, (2, *shape)).astype(np.float32)
    assert np.array_equal(plan.apply(maps), maps)

    swapped = {
        "dims": ["energy", "q"],
        "coords": {
            "energy": {
                "values": [v * 1000 for v in key["coords"]["energy"]["values"]],
                "units": "ueV",
            },
            "q": {"values": [v * 10 for v in key["coords"]["q"]["values"]], "units": "1/nm"},
        },
    }
    axes, dims = spinwave.declared_axes(swapped, "ins_sqw", shape[::-1])
    plan = spinwave.plan_regrid(axes, dims, spinwave.training_axes(), "ins_sqw")
    np.testing.assert_allclose(plan.apply(np.swapaxes(maps, 1, 2)), maps, rtol=1e-5)

    assert spinwave.declared_axes({"shape": list(shape)}, "ins_sqw", shape) is None
    bad_units = {**key, "coords": {**key["coords"], "energy": {"values": [0.0], "units": "K"}}}
    with pytest.raises(ValueError, match="'ins_sqw' declares axis 'energy' in units 'K'"):
        spinwave.declared_axes(bad_units, "ins_sqw", shape)
    with pytest.raises(ValueError, match="declares 160 coords for axis 'energy' of 80 bins"):
        spinwave.declared_axes(key, "ins_sqw", (96, 80))


def test_the_device_declares_axes_that_event_model_accepts():
    device = ins.SpinWaveSpectrometer(config=SHIFTED)
    key = device.describe()["ins_sqw"]
    assert key["dims"] == ["q", "energy"] and key["shape"] == [100, 200]
    assert key["coords"]["q"]["units"] == "1/angstrom"
    assert key["coords"]["energy"]["units"] == "meV"
    np.testing.assert_allclose(key["coords"]["q"]["values"], ins.q_axis(SHIFTED))
    np.testing.assert_allclose(key["coords"]["energy"]["values"], ins.energy_axis(SHIFTED))
    run = compose_run()
    descriptor = run.compose_descriptor(name="primary", data_keys=device.describe())
    schema_validators[DocumentNames.descriptor].validate(descriptor.descriptor_doc)


def test_scans_on_other_grids_are_mapped_flagged_or_refused_per_event(
    RE, make_smartlab, client, caplog
):
    truth = (0.8, 0.12, 0.07)
    devices = [ins.SpinWaveSpectrometer(seed=4, config=c, truth=truth) for c in (SHIFTED, COARSE)]
    short = ins.SpinWaveSpectrometer(seed=4, config=SHORT, truth=truth)
    smartlab = make_smartlab(plugins=["spinwave_cnn", "spinwave_baselines"])
    RE.subscribe(smartlab)
    with caplog.at_level(logging.INFO, logger="smartlab_plugins"):
        uids = [RE(bp.count([device], 2))[0] for device in [*devices, short]]
        smartlab.flush()

    for uid, flag in zip(uids[:2], (0, 1), strict=True):
        (analysis,) = find_analyses(client, run_uid=uid, plugin="spinwave_cnn")
        table = read_events(analysis)
        assert len(table) == 2 and list(table["outside_training"]) == [flag, flag]
        for name, value in zip(("j1", "j2", "d"), truth, strict=True):
            assert table[name].mean() == pytest.approx(value, rel=0.2), name
        # the classical baselines read the map by its axes too, and flag it alike
        (beside,) = find_analyses(client, run_uid=uid, plugin="spinwave_baselines")
        baselines = read_events(beside)
        assert len(baselines) == 2 and list(baselines["outside_training"]) == [flag, flag]
        for kind in ("rf", "gb", "svm"):
            assert baselines[f"{kind}_j1"].mean() == pytest.approx(truth[0], rel=0.2), kind
    assert "energy bins 0.2 meV wide, coarser than the training bins (0.1 meV)" in caplog.text

    (refused,) = find_analyses(client, run_uid=uids[2], plugin="spinwave_cnn")
    assert read_events(refused).empty
    errors = read_errors(refused)
    assert sorted(errors["seq_num"]) == [1, 2]
    assert errors["message"].iloc[0] == (
        "spinwave_cnn: field 'ins_sqw' covers energy 0.2 to 12.2 meV (its declared bins) but "
        "the model needs 0.25 to 16.15 meV (the centres of its training bins, 0.2 to 16.2 meV); "
        "the map is not analysed"
    )
    (refused,) = find_analyses(client, run_uid=uids[2], plugin="spinwave_baselines")
    assert read_events(refused).empty
    message = read_errors(refused)["message"].iloc[0]
    assert message.startswith("spinwave_baselines: field 'ins_sqw' covers energy 0.2 to 12.2 meV")


def test_a_map_without_axes_is_assumed_on_the_training_grid_once_per_run(
    make_smartlab, client, caplog
):
    def run_with_maps(shape, options):
        run = compose_run(metadata={"smartlab": {"plugins": ["spinwave_cnn"], "options": options}})
        descriptor = run.compose_descriptor(
            name="primary",
            data_keys={"ins_sqw": {"source": "sim", "dtype": "array", "shape": list(shape)}},
        )
        docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
        for i, full in enumerate(ins.simulate(3, seed=9).inputs["sqw"]):
            data = full if shape == full.shape else full[::2, ::2]
            event = descriptor.compose_event(
                data={"ins_sqw": data}, timestamps={"ins_sqw": 0.0}, seq_num=i + 1
            )
            docs.append(("event", event))
        return run.start_doc["uid"], [*docs, ("stop", run.compose_stop())]

    smartlab = make_smartlab(plugins=[])
    plain_uid, plain = run_with_maps((96, 160), {})
    stretched_uid, stretched = run_with_maps((48, 80), {"spinwave_cnn": {"resample": True}})
    with caplog.at_level(logging.INFO, logger="smartlab_plugins"):
        for name, doc in plain + stretched:
            smartlab(name, doc)
        smartlab.flush()

    for uid in (plain_uid, stretched_uid):
        (analysis,) = find_analyses(client, run_uid=uid, plugin="spinwave_cnn")
        assert len(read_events(analysis)) == 3
    assumed = [r for r in caplog.records if "declares no axes (coords); assuming" in r.message]
    assert [r.levelno for r in assumed] == [logging.INFO]
    assert plain_uid[:8] in assumed[0].message
    assert "96 x 160 bins, |Q| 0.3 to 3 1/angstrom, E 0.2 to 16.2 meV" in assumed[0].message
    stretch = [r for r in caplog.records if "resample stretches it onto" in r.message]
    assert [r.levelno for r in stretch] == [logging.WARNING]
    assert stretched_uid[:8] in stretch[0].message
