"""The worker with a real RunEngine and a real Tiled server: faults stay with their plugin."""

from __future__ import annotations

import copy
import logging

import bluesky.plans as bp
import numpy as np
import pytest
from sample_plugins import AlwaysFails, FailsOnOddEvents, RunCounter, TotalIntensity, WrongLength

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_errors, read_events


@pytest.fixture
def beam():
    return make_devices(seed=7)


def analysis_of(client, uid, plugin):
    (analysis,) = find_analyses(client, run_uid=uid, plugin=plugin)
    return analysis


def test_a_failing_plugin_never_aborts_the_scan_and_its_errors_are_published(
    RE, make_smartlab, client, beam
):
    smartlab = make_smartlab(plugins=["peak_stats"], max_failures=10)
    for plugin in (TotalIntensity(), FailsOnOddEvents(), AlwaysFails()):
        smartlab.register(plugin)
        smartlab.enable(plugin.name)
    RE.subscribe(smartlab)

    (uid,) = RE(bp.scan([beam["beam"]], beam["steer"], -2, 2, 9))
    smartlab.flush()

    assert client[uid].metadata["stop"]["exit_status"] == "success"
    healthy = analysis_of(client, uid, "total_intensity")
    assert healthy.metadata["status"] == "complete"
    assert list(read_events(healthy)["seq_num"]) == list(range(1, 10))

    partial = analysis_of(client, uid, "fails_on_odd")
    assert list(read_events(partial)["seq_num"]) == [2, 4, 6, 8]
    errors = read_errors(partial)
    assert sorted(errors["seq_num"]) == [1, 3, 5, 7, 9]
    assert set(errors["stage"]) == {"analyze"}
    assert errors["message"].str.contains("cannot analyse odd event").all()
    assert errors["traceback"].str.contains("sample_plugins.py").all()

    assert analysis_of(client, uid, "peak_stats").metadata["events"] == 9


def test_a_plugin_that_keeps_failing_is_disabled_for_the_run(RE, make_smartlab, client, beam):
    smartlab = make_smartlab(plugins=[], max_failures=3)
    smartlab.register(AlwaysFails())
    smartlab.enable("always_fails")
    RE.subscribe(smartlab)

    (uid,) = RE(bp.scan([beam["beam"]], beam["steer"], -2, 2, 9))
    smartlab.flush()

    analysis = analysis_of(client, uid, "always_fails")
    assert analysis.metadata["status"] == "disabled"
    errors = read_errors(analysis)
    assert (errors["stage"] == "analyze").sum() == 3
    assert errors["message"].str.contains("disabled for this run after 3 failures").any()
    (summary,) = [s for s in smartlab.run_summaries if s["run_uid"] == uid]
    assert summary["plugins"]["always_fails"]["disabled"]


def test_non_finite_values_are_refused_per_event_and_the_rest_analysed(
    make_smartlab, client, beam, caplog
):
    docs = []
    from bluesky import RunEngine

    recorder = RunEngine()
    recorder.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    recorder(bp.scan([beam["beam"]], beam["steer"], -2, 2, 6))
    event = [doc for name, doc in docs if name == "event"][2]
    event["data"]["beam_profile"][10] = np.nan

    smartlab = make_smartlab(plugins=["peak_stats"])
    with caplog.at_level(logging.ERROR, logger="smartlab_plugins"):
        for name, doc in docs:
            smartlab(name, doc)
        smartlab.flush()
    assert "plugin peak_stats: field 'beam_profile' has 1 NaN/inf value(s) (event 3)" in caplog.text

    analysis = analysis_of(client, docs[0][1]["uid"], "peak_stats")
    assert list(read_events(analysis)["seq_num"]) == [1, 2, 4, 5, 6]
    (error,) = read_errors(analysis).itertuples()
    assert error.seq_num == 3
    assert "field 'beam_profile' has 1 NaN/inf value(s)" in error.message


def test_results_of_the_wrong_length_are_refused_with_a_clear_error(
    RE, make_smartlab, client, beam
):
    smartlab = make_smartlab(plugins=[])
    smartlab.register(WrongLength())
    smartlab.enable("wrong_length")
    RE.subscribe(smartlab)
    (uid,) = RE(bp.scan([beam["beam"]], beam["steer"], -1, 1, 3))
    smartlab.flush()
    errors = read_errors(analysis_of(client, uid, "wrong_length"))
    assert (
        errors["message"].str.contains("scalar result 'short' has 0 entries for a batch of 1").any()
    )


def test_the_start_document_chooses_plugins_per_run(RE, make_smartlab, client, beam, caplog):
    smartlab = make_smartlab()
    smartlab.register(TotalIntensity())
    RE.subscribe(smartlab)

    with caplog.at_level(logging.ERROR, logger="smartlab_plugins"):
        (only,) = RE(bp.count([beam["beam"]], 2), smartlab={"plugins": ["total_intensity", "nope"]})
        (without,) = RE(bp.count([beam["beam"]], 2), smartlab={"disable": ["total_intensity"]})
        (none,) = RE(bp.count([beam["beam"]], 2), smartlab=False)
        smartlab.flush()

    assert [a.metadata["plugin"] for a in find_analyses(client, run_uid=only)] == [
        "total_intensity"
    ]
    assert "total_intensity" not in [
        a.metadata["plugin"] for a in find_analyses(client, run_uid=without)
    ]
    assert "peak_stats" in [a.metadata["plugin"] for a in find_analyses(client, run_uid=without)]
    assert find_analyses(client, run_uid=none) == []
    assert "unknown plugin 'nope'; available plugins:" in caplog.text


def test_plugin_state_is_per_run(RE, make_smartlab, client):
    from ophyd.sim import det

    smartlab = make_smartlab(plugins=[])
    smartlab.register(RunCounter())
    smartlab.enable("run_counter")
    RE.subscribe(smartlab)
    first, second = RE(bp.count([det], 5)), RE(bp.count([det], 7))
    smartlab.flush()
    assert analysis_of(client, first[0], "run_counter").metadata["summary"] == {"events": 5}
    assert analysis_of(client, second[0], "run_counter").metadata["summary"] == {"events": 7}


@pytest.mark.parametrize(
    "request_", [{"plugins": 5}, {"disable": [[1]]}, {"plugins": [None]}], ids=repr
)
def test_a_malformed_plugin_request_is_logged_and_the_run_still_analysed(
    RE, make_smartlab, client, beam, request_, caplog
):
    """A start document's ``smartlab`` request of the wrong type is logged and ignored
    (no plugins named, nothing disabled); the run is not rejected."""
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    with caplog.at_level(logging.ERROR, logger="smartlab_plugins"):
        (uid,) = RE(bp.count([beam["beam"]], num=2), smartlab={**request_})
    smartlab.flush()
    assert "expected a list of plugin names" in caplog.text
    assert "rejected" not in caplog.text
    named = "plugins" in request_
    assert bool(find_analyses(client, run_uid=uid, plugin="peak_stats")) is not named


def test_one_plugin_name_alone_is_read_as_a_list(RE, make_smartlab, client, beam):
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.count([beam["beam"]], num=2), smartlab={"plugins": "peak_stats"})
    smartlab.flush()
    assert find_analyses(client, run_uid=uid, plugin="peak_stats")


def test_the_worker_process_gets_its_share_of_threads(make_smartlab, monkeypatch):
    """torch and BLAS in the worker use SMARTLAB_WORKER_THREADS threads, not one per core."""
    monkeypatch.setenv("SMARTLAB_WORKER_THREADS", "1")
    smartlab = make_smartlab(plugins=["peak_stats"], isolation="process")
    with open(f"/proc/{smartlab.status()['worker_pid']}/environ", "rb") as environ:
        variables = environ.read().decode().split("\0")
    assert "OMP_NUM_THREADS=1" in variables
