"""phase_cnn reads any declared detector geometry, and the cubic phase above T_C.

The frames are integrated by pyFAI for the geometry that the image's data key
declares (PONI parameters), so another distance, arm angle or a binned detector
of another shape is read right; a geometry missing a parameter is refused per
event with an error naming it.
"""

from __future__ import annotations

from dataclasses import replace

import bluesky.plans as bp
import numpy as np
from event_model import compose_run

from smartlab_plugins.devices import mpb
from smartlab_plugins.results import find_analyses, read_errors, read_events


def analysis_of(client, uid):
    (analysis,) = find_analyses(client, run_uid=uid, plugin="phase_cnn")
    return analysis


def test_another_distance_and_arm_and_the_cubic_phase_are_read_right(RE, make_smartlab, client):
    config = replace(mpb.MPBConfig(), distance=120.0, arm_two_theta=52.0)
    devices = mpb.make_devices(seed=8, config=config)
    smartlab = make_smartlab(plugins=["phase_cnn"])
    RE.subscribe(smartlab)
    stage = devices["sample"]
    points = [(0.15, 300.0), (0.85, 300.0), (0.3, 760.0), (0.7, 790.0)]
    plan = bp.list_scan(
        [devices["mpb"]], stage.x, [p[0] for p in points], stage.temperature, [p[1] for p in points]
    )
    (uid,) = RE(plan)
    smartlab.flush()
    table = read_events(analysis_of(client, uid))
    assert list(table["phase_name"]) == ["rhombohedral", "tetragonal", "cubic", "cubic"]
    assert (table["confidence"][:2] > 0.9).all()
    # a cubic frame could also be a rhombohedral one just below T_C, whose splitting is
    # under the resolution: the calibrated answer is surer than not, not certain
    assert (table["p_cubic"][2:] > 0.5).all()


def _binned_run(geometry: dict | None) -> tuple[str, list[tuple[str, dict]]]:
    """Two tetragonal frames binned 2 x 2 (48 x 121 px of 0.688 mm), with ``geometry``."""
    config = mpb.MPBConfig()
    frames, _ = mpb.generate_frames(
        np.array([0.85, 0.15]), np.array([300.0, 300.0]), np.random.default_rng(3), config
    )
    binned = frames[:, :96, :242].reshape(2, 48, 2, 121, 2).sum(axis=(2, 4))
    key = {"source": "sim", "dtype": "array", "shape": [48, 121]}
    if geometry is not None:
        key["geometry"] = geometry
    run = compose_run(metadata={"smartlab": {"plugins": ["phase_cnn"]}})
    descriptor = run.compose_descriptor(name="primary", data_keys={"mpb_image": key})
    docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    for i, frame in enumerate(binned):
        event = descriptor.compose_event(
            data={"mpb_image": frame}, timestamps={"mpb_image": 0.0}, seq_num=i + 1
        )
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return run.start_doc["uid"], docs


def test_a_binned_detector_of_another_shape_is_read_through_its_declared_geometry(
    make_smartlab, client
):
    nominal = mpb.poni_geometry(mpb.MPBConfig())
    # 2 x 2 binning: pixels twice as large; the PONI stays where it was in metres,
    # less the half row and column the crop dropped (none: 96 and 242 are even)
    binned = {**nominal, "pixel1": 2 * nominal["pixel1"], "pixel2": 2 * nominal["pixel2"]}
    binned["poni1"] = nominal["poni1"] - 0.5 * nominal["pixel1"]
    binned["poni2"] = nominal["poni2"] - 0.5 * nominal["pixel2"]
    declared_uid, declared = _binned_run(binned)
    bare_uid, bare = _binned_run(None)
    broken = {k: v for k, v in binned.items() if k != "rot1"}
    broken_uid, broken_docs = _binned_run(broken)
    smartlab = make_smartlab(plugins=[])
    for name, doc in declared + bare + broken_docs:
        smartlab(name, doc)
    smartlab.flush()

    table = read_events(analysis_of(client, declared_uid))
    assert list(table["phase_name"]) == ["tetragonal", "rhombohedral"]
    bare_errors = read_errors(analysis_of(client, bare_uid))["message"]
    assert "holds 48x121 frames and declares no geometry" in bare_errors.iloc[0]
    broken_errors = read_errors(analysis_of(client, broken_uid))["message"]
    assert "declares a geometry without rot1" in broken_errors.iloc[0]
    assert read_events(analysis_of(client, broken_uid)).empty
