"""transition_lstm in real ramps: the flag is raised once, live, near the true onset."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import compose_run

from smartlab_plugins.devices import operando
from smartlab_plugins.plugins import transition_lstm
from smartlab_plugins.results import find_analyses, read_errors, read_events

NAME = transition_lstm.NAME
RATE = 4.0  # K/min: 2 K per 30 s frame
STEP = RATE / 2


@pytest.fixture
def smartlab(make_smartlab):
    return make_smartlab(plugins=[NAME])


@pytest.fixture
def ramp_devices():
    devices = operando.make_devices(seed=11)
    return devices["operando"], devices["temperature"]


def analysis_of(client, uid):
    (analysis,) = find_analyses(client, run_uid=uid, plugin=NAME)
    return analysis


def test_a_heating_ramp_raises_the_flag_once_during_the_scan_near_the_true_onset(
    RE, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    t_up = detector.truth["t_up"]
    seen: dict = {}

    def poll_for_the_flag(name, doc):  # on the RunEngine thread, while the ramp goes on
        if name == "start":
            seen["uid"] = doc["uid"]
        past_onset = name == "event" and doc["data"]["operando_temperature"] > t_up + 3 * STEP
        if past_onset and "flag_seen_at_event" not in seen:
            smartlab.flush()
            table = read_events(analysis_of(client, seen["uid"]))
            if (table["flag"] == 1).any():
                seen["flag_seen_at_event"] = doc["seq_num"]

    RE.subscribe(smartlab)
    RE.subscribe(poll_for_the_flag)
    (uid,) = RE(operando.ramp(detector, controller, t_up - 50, t_up + 50, RATE, 50))
    smartlab.flush()

    assert seen["flag_seen_at_event"] < 50  # read back from Tiled before the ramp ended
    analysis = analysis_of(client, uid)
    table = read_events(analysis)
    assert list(table["seq_num"]) == list(range(1, 51))
    assert table["flag"].sum() == 1
    flagged = table[table["flag"] == 1].iloc[0]
    frame_temperatures = np.asarray(client[uid]["primary"]["operando_temperature"].read())
    true_onset = int(np.argmax(frame_temperatures > t_up)) + 1  # first frame above T_up
    assert abs(int(flagged["seq_num"]) - true_onset) <= 2
    assert abs(flagged["onset_temperature"] - t_up) < 2 * STEP
    assert 0 < flagged["onset_temperature_std"] < 2 * STEP
    assert table["p_transition"].iloc[: true_onset - 3].max() < 0.5
    assert table["p_transition"].iloc[true_onset + 2 :].min() > 0.5
    assert np.isnan(table[table["flag"] == 0]["onset_temperature"]).all()
    summary = analysis.metadata["summary"]
    assert summary["transition"] is True and summary["direction"] == "heating"
    assert summary["flag_seq_num"] == int(flagged["seq_num"])
    assert "transition flagged at event" in summary["result"]
    assert analysis.metadata["model"] == NAME and len(analysis.metadata["sha256"]) == 64
    units = analysis.metadata["units"]  # the onset has the unit of operando_temperature
    assert units["onset_temperature"] == units["onset_temperature_std"] == "K"
    assert units["p_transition"] == units["flag"] == ""


def test_cooling_finds_the_lower_branch_and_a_short_ramp_reports_no_transition(
    RE, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    t_down, t_up = detector.truth["t_down"], detector.truth["t_up"]
    RE.subscribe(smartlab)
    (cooling,) = RE(operando.ramp(detector, controller, t_up + 40, t_down - 40, 6.0, 40))
    (short,) = RE(operando.ramp(detector, controller, t_down - 60, t_down - 30, RATE, 12))
    smartlab.flush()

    table = read_events(analysis_of(client, cooling))
    assert table["flag"].sum() == 1
    onset = table.loc[table["flag"] == 1, "onset_temperature"].iloc[0]
    assert abs(onset - t_down) < 2 * 3.0  # 3 K per frame at 6 K/min
    assert analysis_of(client, cooling).metadata["summary"]["direction"] == "cooling"

    short_analysis = analysis_of(client, short)
    assert read_events(short_analysis)["flag"].sum() == 0
    summary = short_analysis.metadata["summary"]
    assert summary["transition"] is False and summary["result"] == "no transition seen"
    assert summary["frames"] == 12 and summary["last_temperature"] < t_down


def feed_patterns(smartlab, patterns, seq_nums, options=None) -> str:
    """A run of the given patterns and seq_nums (in this order), sent to SmartLab directly."""
    metadata = {
        "smartlab": {"plugins": [NAME], **({"options": {NAME: options}} if options else {})}
    }
    run = compose_run(metadata=metadata)
    length = len(patterns[0])
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={
            "operando_pattern": {"source": "sim", "dtype": "array", "shape": [length]},
            "operando_temperature": {"source": "sim", "dtype": "number", "shape": []},
        },
    )
    smartlab("start", run.start_doc)
    smartlab("descriptor", descriptor.descriptor_doc)
    for seq_num, pattern in zip(seq_nums, patterns, strict=True):
        event = descriptor.compose_event(
            data={"operando_pattern": pattern, "operando_temperature": 300.0 + seq_num},
            timestamps={"operando_pattern": 0.0, "operando_temperature": 0.0},
            seq_num=seq_num,
        )
        smartlab("event", event)
    smartlab("stop", run.compose_stop())
    return run.start_doc["uid"]


def quiet_patterns(n: int, length: int = 512) -> list[np.ndarray]:
    """``n`` frames of an ordered sample far below its transition (no change expected)."""
    ramp = operando.simulate(1, seed=4).inputs["patterns"][0]
    patterns = [ramp[i % 4] for i in range(n)]
    if length != 512:
        grid = np.linspace(0, 511, length)
        patterns = [np.interp(grid, np.arange(512), p).astype(np.float32) for p in patterns]
    return patterns


def test_out_of_order_and_missing_events_are_recorded_and_the_detector_carries_on(smartlab, client):
    uid = feed_patterns(smartlab, quiet_patterns(5), seq_nums=[1, 2, 4, 3, 5])
    smartlab.flush()

    analysis = analysis_of(client, uid)
    table = read_events(analysis)
    assert list(table["seq_num"]) == [1, 2, 4, 5]
    assert table.loc[table["seq_num"] == 4, "note"].iloc[0] == (
        "event 3 missing: continued from event 2"
    )
    errors = read_errors(analysis)
    assert list(errors["seq_num"]) == [3]
    assert "event 3 arrived after event 4" in errors["message"].iloc[0]
    summary = analysis.metadata["summary"]
    assert summary["frames"] == 4 and summary["missing_events"] == 1
    assert analysis.metadata["status"] == "partial"  # event 3 was refused: not complete
    assert analysis.metadata["rejected"] == 1


def test_a_pattern_of_another_length_is_refused_unless_the_run_asks_to_resample(smartlab, client):
    refused = feed_patterns(smartlab, quiet_patterns(3, length=256), seq_nums=[1, 2, 3])
    resampled = feed_patterns(
        smartlab, quiet_patterns(3, length=256), seq_nums=[1, 2, 3], options={"resample": True}
    )
    smartlab.flush()

    errors = read_errors(analysis_of(client, refused))
    assert list(errors["stage"]) == ["analyze"] * 3 + ["disabled"]  # max_failures is 3
    assert (
        "transition_lstm: expected 512 data in field 'operando_pattern', got 256"
        in (errors["message"].iloc[0])
    )
    assert read_events(analysis_of(client, refused)).empty
    table = read_events(analysis_of(client, resampled))
    assert list(table["seq_num"]) == [1, 2, 3]
    assert (table["p_transition"] < 0.5).all() and table["flag"].sum() == 0


def test_a_blank_ramp_is_not_analysed_and_never_flags(smartlab, client):
    """All-zero frames (a closed shutter) are no patterns: NaN, no flag, said in the note."""
    blank = [np.zeros(512, np.float32)] * 3 + [np.full(512, 7.0, np.float32)]
    uid = feed_patterns(smartlab, [*blank, *quiet_patterns(2)], seq_nums=[1, 2, 3, 4, 5, 6])
    smartlab.flush()

    analysis = analysis_of(client, uid)
    table = read_events(analysis)
    assert list(table["seq_num"]) == [1, 2, 3, 4, 5, 6]
    assert table["p_transition"].iloc[:4].isna().all() and table["flag"].sum() == 0
    assert all("blank pattern" in note for note in table["note"].iloc[:4])
    assert (table["p_transition"].iloc[4:] < 0.5).all()
    # no pattern is as unlike the training data as an input can be
    assert np.isinf(table["ood_score"].iloc[:4]).all()
    assert list(table["in_distribution"].iloc[:4]) == [0, 0, 0, 0]
    assert (
        np.isfinite(table["ood_score"].iloc[4:]).all() and (table["ood_score"].iloc[4:] < 10).all()
    )
    assert read_errors(analysis).empty
    summary = analysis.metadata["summary"]
    assert summary["blank_frames"] == 4 and summary["frames"] == 2
    assert summary["result"] == "no transition seen"
