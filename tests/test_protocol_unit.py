"""The messages between the RunEngine's process and its worker, and how the worker answers.

Every message crosses a socket pickled, so each must survive the round trip
as it is. The worker's answers are checked through the real host (a worker
thread), with no Tiled server: requests touch no result, so none is needed.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle

import pytest

from smartlab_plugins import protocol
from smartlab_plugins.manager import UnknownPluginError
from smartlab_plugins.protocol import Limits, WorkerConfig
from smartlab_plugins.runner import ThreadHost, WorkerError

SAMPLES = [
    WorkerConfig("http://127.0.0.1:8000", "k" * 16, enabled=["peak_stats"], limits=Limits(2)),
    protocol.Shipment([("start", {"uid": "r"})], dropped={"r": 3}),
    protocol.Enable("peak_stats"),
    protocol.Disable("peak_stats"),
    protocol.Register("sample_plugins:TotalIntensity"),
    protocol.StatusRequest(),
    protocol.SetLive({"peak_stats": {"arrays": True, "inputs": False}}),
    protocol.Flush(1.5),
    protocol.Close(None),
    protocol.Ready(["peak_stats"], ["peak_stats"]),
    protocol.Failed("ValueError: no"),
    protocol.Log(logging.makeLogRecord({"msg": "hello"}).__dict__),
    protocol.RunFinished({"run_uid": "r"}),
    protocol.LiveResults({"plugin": "peak_stats"}),
    protocol.Reply(error=ValueError("no")),
]


def test_every_message_type_has_a_sample_here() -> None:
    declared = {
        obj
        for obj in vars(protocol).values()
        if dataclasses.is_dataclass(obj) and obj.__module__ == protocol.__name__
    }
    assert declared - {Limits} == {type(sample) for sample in SAMPLES}


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_socket(message) -> None:
    again = pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(again) is type(message)
    if isinstance(message, protocol.Reply):
        assert isinstance(again.error, ValueError) and str(again.error) == "no"
    else:
        assert again == message


@pytest.fixture(scope="module")
def host():
    host = ThreadHost(
        WorkerConfig("http://127.0.0.1:9", None, enabled=["peak_stats"], raw=False, nice=0)
    )
    yield host
    host.close(timeout=5)


def test_the_worker_answers_each_request(host: ThreadHost) -> None:
    assert host.request(protocol.StatusRequest())["enabled"] == ["peak_stats"]
    assert host.request(protocol.Disable("peak_stats")) is None
    assert host.request(protocol.StatusRequest())["enabled"] == []
    host.request(protocol.Enable("peak_stats"))
    assert host.request(protocol.StatusRequest())["enabled"] == ["peak_stats"]
    wanted = {"peak_stats": {"arrays": False, "inputs": False}}
    assert host.request(protocol.SetLive(wanted)) == ["peak_stats"]
    assert host.request(protocol.Flush(30.0)) is True


def test_a_refused_request_is_raised_on_the_callers_side_and_the_worker_goes_on(
    host: ThreadHost,
) -> None:
    with pytest.raises(UnknownPluginError, match="no_such_plugin"):
        host.request(protocol.Enable("no_such_plugin"))
    with pytest.raises(TypeError, match="not a worker request: str"):
        host.request("status")  # type: ignore[arg-type]
    assert host.request(protocol.StatusRequest())["enabled"] == ["peak_stats"]


def test_after_close_a_request_says_the_worker_is_not_running() -> None:
    host = ThreadHost(WorkerConfig("http://127.0.0.1:9", None, enabled=[], raw=False, nice=0))
    assert host.close(timeout=5) is True
    with pytest.raises(WorkerError, match="not running"):
        host.request(protocol.StatusRequest())
