"""The worker's supervision rules, each caused on purpose, without a server.

The real :class:`~smartlab_plugins.worker.Worker` analyses runs composed with
event-model and publishes into :class:`MemoryPublisher`; a plugin hangs, falls
behind or fails, and the test checks what the supervisor records and that the
healthy plugin beside it is complete. ``test_faults.py`` does the same through a
real RunEngine, worker process and Tiled server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from event_model import compose_run
from memory_publisher import MemoryPublisher
from sample_plugins import AlwaysFails, Crawls, Hangs, TotalIntensity

from smartlab_plugins.manager import PluginManager
from smartlab_plugins.protocol import Limits, Shipment
from smartlab_plugins.worker import Worker


def run_documents(events: int) -> tuple[str, list[tuple[str, dict]]]:
    """A run of ``events`` events, each with one 1-D field ``profile``."""
    run = compose_run()
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={"profile": {"source": "sim", "dtype": "array", "shape": [16]}},
    )
    docs: list[tuple[str, dict]] = [
        ("start", run.start_doc),
        ("descriptor", descriptor.descriptor_doc),
    ]
    for i in range(events):
        event = descriptor.compose_event(
            data={"profile": np.full(16, float(i))}, timestamps={"profile": time.time()}
        )
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return run.start_doc["uid"], docs


@pytest.fixture
def worker_with() -> Iterator:
    made: list[tuple[Worker, list]] = []

    def make(plugins: list[object], limits: Limits) -> tuple[Worker, MemoryPublisher]:
        manager = PluginManager(load_entrypoints=False)
        names = [manager.register(plugin) for plugin in plugins]
        publisher = MemoryPublisher()
        worker = Worker(manager, publisher, enabled=names, limits=limits)
        made.append((worker, plugins))
        return worker, publisher

    yield make
    for worker, plugins in made:
        for plugin in plugins:
            if isinstance(plugin, Hangs):
                plugin.release.set()
        worker.close()


def analysis(publisher: MemoryPublisher, run_uid: str, plugin: str) -> tuple[dict, list]:
    (key,) = [k for k in publisher.of_run(run_uid) if publisher.analyses[k]["plugin"] == plugin]
    return publisher.analyses[key], publisher.errors[key]


def test_a_hung_plugin_is_timed_out_where_it_hung_and_the_others_finish(worker_with) -> None:
    worker, publisher = worker_with(
        [Hangs(at=5), TotalIntensity()], Limits(max_batch=1, plugin_timeout=0.5)
    )
    uid, docs = run_documents(12)
    started = time.monotonic()
    worker.process(Shipment(docs))
    took = time.monotonic() - started

    hung, errors = analysis(publisher, uid, "hangs")
    assert hung["timed_out"] is True and hung["status"] != "complete"
    (timeout,) = [e for e in errors if e.error == "PluginTimeout"]
    assert timeout.seq_num == 5 and "plugin_timeout=0.5 s" in timeout.message
    assert "sample_plugins.py:" in timeout.traceback and "in wait" in timeout.traceback
    healthy, healthy_errors = analysis(publisher, uid, "total_intensity")
    assert healthy["status"] == "complete" and healthy["events"] == 12 and not healthy_errors
    assert took < 0.5 * 7  # about one timeout for the hung plugin, not one per batch after it


def test_a_plugin_behind_with_drop_has_batches_skipped_and_recorded(worker_with) -> None:
    worker, publisher = worker_with(
        [Crawls(per_event=0.3), TotalIntensity()],
        Limits(max_batch=1, lane_capacity=1, backpressure="drop", plugin_timeout=10),
    )
    uid, docs = run_documents(10)
    worker.process(Shipment(docs))

    slow, errors = analysis(publisher, uid, "crawls")
    behind = [e for e in errors if e.error == "PluginBehind"]
    assert slow["skipped"] == len(behind) > 0
    assert slow["events"] + slow["skipped"] == 10 and slow["status"] == "partial"
    assert "1 batches already waiting" in behind[0].message
    # drop skips for any plugin whose lane is full when a batch comes, however fast it
    # is; every batch is either analysed or recorded as skipped, never lost silently
    quick, quick_errors = analysis(publisher, uid, "total_intensity")
    assert quick["events"] + quick["skipped"] == 10
    assert quick["skipped"] == len([e for e in quick_errors if e.error == "PluginBehind"])


def test_a_failing_plugin_is_disabled_after_max_failures(worker_with) -> None:
    worker, publisher = worker_with(
        [AlwaysFails(), TotalIntensity()], Limits(max_batch=1, max_failures=2)
    )
    uid, docs = run_documents(8)
    worker.process(Shipment(docs))

    failing, errors = analysis(publisher, uid, "always_fails")
    failures = [e for e in errors if e.error == "RuntimeError"]
    assert len(failures) == 2
    assert any("disabled for this run after 2 failures" in e.message for e in errors)
    assert all("broken on purpose" in e.message for e in failures)
    assert failing["events"] == 0 and failing["status"] != "complete"
    healthy, _ = analysis(publisher, uid, "total_intensity")
    assert healthy["events"] == 8


@pytest.mark.parametrize(
    "bad",
    [{"backpressure": "wait"}, {"max_batch": 0}, {"plugin_timeout": -1}, {"lane_capacity": 0}],
)
def test_limits_refuse_what_the_worker_cannot_use(bad: dict) -> None:
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        Limits(**bad)
