"""The front door's rules, each caused on purpose, in milliseconds.

The courier here is a real :class:`~smartlab_plugins.front_door.Courier` that
keeps what it is sent in a list; a test holds it (the far side busy), makes it
raise :class:`Away` (the far side gone) or fail (a bug), and checks what the
front door does: order, spill, drop, retry, and what ``close`` says.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from smartlab_plugins.front_door import Away, FrontDoor
from smartlab_plugins.run_index import RunIndex


class ListCourier:
    """Keeps what it is sent; can be held, sent away, or made to fail."""

    label = "the test courier"

    def __init__(self) -> None:
        self.refused = 0
        self.received: list[tuple[Any, Any]] = []
        self.dropped_seen: dict[str, int] = {}
        self.held = threading.Event()
        self.held.set()  # set: not held
        self.entered = threading.Event()
        self.away_for = 0  # sends that raise Away before one goes through
        self.fail_next = 0  # sends that raise RuntimeError
        self.finished = True
        self.rounds = 0

    def prepare(self, docs: list[tuple[Any, Any]], dropped: dict[str, int]) -> list[Any]:
        self.dropped_seen = dict(dropped)
        return list(docs)

    def send(self, items: list[Any]) -> None:
        self.entered.set()
        assert self.held.wait(timeout=30), "the test never let the courier go"
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("a bug in the courier")
        if self.away_for:
            self.away_for -= 1
            raise Away("the far side is not answering")
        self.received.extend(items)
        self.rounds += 1

    def settle(self, timeout: float) -> bool:
        return True

    def finish(self, timeout: float) -> bool:
        return self.finished


def events(n: int, run: str = "run-1") -> list[tuple[str, dict]]:
    """A run of ``n`` events as the RunEngine would emit them (only the keys that matter)."""
    opening = [("start", {"uid": run}), ("descriptor", {"uid": "d", "run_start": run})]
    body = [("event", {"descriptor": "d", "seq_num": i + 1}) for i in range(n)]
    return [*opening, *body, ("stop", {"uid": "s", "run_start": run})]


@pytest.fixture
def courier() -> ListCourier:
    return ListCourier()


@pytest.fixture
def door_of(courier: ListCourier, tmp_path: Path):
    doors: list[FrontDoor] = []

    def make(**kw: Any) -> FrontDoor:
        kw.setdefault("linger", 0.0)
        doors.append(FrontDoor(courier, spool_dir=tmp_path / "spool", **kw))
        return doors[-1]

    yield make
    courier.held.set()
    for door in doors:
        door.close(timeout=5)


def hold_after_first(door: FrontDoor, courier: ListCourier) -> None:
    """Hold the courier and wait until the feeder is inside it (the far side busy)."""
    courier.held.clear()
    door("start", {"uid": "warm-up"})
    assert courier.entered.wait(timeout=10)


def test_every_document_arrives_once_in_order(door_of, courier) -> None:
    door = door_of()
    docs = events(2000)
    for name, doc in docs:
        door(name, doc)
    assert door.flush(timeout=10)
    assert courier.received == docs
    assert door.close(timeout=5) is True


def test_a_document_after_a_quiet_spell_goes_at_once_and_a_burst_goes_together(
    door_of, courier
) -> None:
    door = door_of(linger=3.0)  # a long linger makes "at once" and "together" plain
    started = time.monotonic()
    door("start", {"uid": "r"})
    while not courier.received and time.monotonic() - started < 5:
        time.sleep(0.005)
    assert time.monotonic() - started < 1.5  # not held for the linger
    for name, doc in events(50)[1:]:
        door(name, doc)
    assert door.flush(timeout=30)
    assert courier.rounds == 2  # the burst waited out the linger and went in one round


def test_behind_the_rest_waits_on_disk_in_order_and_none_is_lost(door_of, courier) -> None:
    door = door_of(max_pending=10)
    hold_after_first(door, courier)
    docs = events(100)
    for name, doc in docs:
        door(name, doc)
    assert door.spilled_total == len(docs) - 10  # exactly: the feeder took nothing meanwhile
    assert door.door_status()["on_disk"] == len(docs) - 10
    courier.held.set()
    assert door.flush(timeout=10)
    assert courier.received[1:] == docs
    assert door.door_status()["on_disk"] == 0


def test_drop_counts_events_per_run_and_never_drops_a_run_or_stream(door_of, courier) -> None:
    door = door_of(max_pending=5, backpressure="drop")
    hold_after_first(door, courier)
    docs = events(50, run="run-7")
    for name, doc in docs:
        door(name, doc)
    courier.held.set()
    assert door.flush(timeout=10)
    names = [name for name, _ in courier.received[1:]]
    assert names[:2] == ["start", "descriptor"] and names[-1] == "stop"
    assert door.dropped_total == 50 - 3  # the 5 kept: start, descriptor, 3 events; stop goes too
    assert len(courier.received) - 1 + door.dropped_total == len(docs)
    door("event", {"descriptor": "d"})  # the next round tells the courier the count so far
    assert door.flush(timeout=10)
    assert courier.dropped_seen == {"run-7": door.dropped_total}


def test_away_keeps_what_was_prepared_and_sends_it_first_when_back(
    door_of, courier, caplog
) -> None:
    door = door_of(batch=7)
    courier.away_for = 3
    docs = events(40)
    with caplog.at_level(logging.WARNING):
        for name, doc in docs:
            door(name, doc)
        assert door.flush(timeout=20)
    assert courier.received == docs  # in order, each once, though sent again after failing
    assert door.kept_while_away > 0
    assert "lost the test courier" in caplog.text and "is back" in caplog.text


def test_an_exception_costs_its_round_and_the_feeder_goes_on(door_of, courier, caplog) -> None:
    door = door_of()
    hold_after_first(door, courier)
    courier.fail_next = 1
    courier.held.set()
    with caplog.at_level(logging.ERROR):
        assert door.flush(timeout=10)
    assert door.unsendable == 1 and "RuntimeError: a bug in the courier" in caplog.text
    docs = events(3)
    for name, doc in docs:
        door(name, doc)
    assert door.flush(timeout=10)
    assert courier.received == docs


def test_a_document_that_cannot_wait_on_disk_is_counted_and_the_call_returns(
    door_of, courier
) -> None:
    door = door_of(max_pending=1)
    hold_after_first(door, courier)
    door("event", {"descriptor": "d", "seq_num": 1})
    door("event", {"descriptor": "d", "seq_num": 2, "data": {"f": lambda: 0}})  # pickle refuses
    door("event", {"descriptor": "d", "seq_num": 3})
    assert door.unsendable == 1
    courier.held.set()
    assert door.flush(timeout=10)
    assert [doc["seq_num"] for _, doc in courier.received[1:]] == [1, 3]


def test_close_says_what_is_pending_and_returns_false_when_time_runs_out(
    door_of, courier, caplog
) -> None:
    door = door_of(max_pending=5)
    hold_after_first(door, courier)
    for name, doc in events(20):
        door(name, doc)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert door.close(timeout=0.5) is False
    assert time.monotonic() - started < 0.5 + 10 + 2  # finish() gets its share, no more
    assert "5 in memory" in caplog.text and "18 on disk, behind" in caplog.text
    assert "time ran out" in caplog.text
    door("event", {})  # after close: ignored, never raises
    assert door.door_status()["accepted"] == 1 + 23


def test_close_is_false_when_the_far_side_does_not_finish(door_of, courier) -> None:
    door = door_of()
    door("start", {"uid": "r"})
    courier.finished = False
    assert door.close(timeout=5) is False
    assert door.close(timeout=5) is True  # closed already: nothing more to do


def test_the_run_index_traces_every_kind_of_document_and_forgets_at_stop() -> None:
    index = RunIndex()
    assert index.note("start", {"uid": "r"}) == "r"
    assert index.note("descriptor", {"uid": "d", "run_start": "r"}) == "r"
    assert index.note("resource", {"uid": "res", "run_start": "r"}) == "r"
    assert index.note("stream_resource", {"uid": "sr", "run_start": "r"}) == "r"
    assert index.run_of("event_page", {"descriptor": "d"}) == "r"
    assert index.run_of("datum", {"datum_id": "res/0"}) == "r"
    assert index.run_of("datum_page", {"datum_id": ["res/0", "res/1"]}) == "r"
    assert index.run_of("stream_datum", {"stream_resource": "sr"}) == "r"
    assert index.run_of("event", {"descriptor": "unknown"}) is None
    assert index.run_of("event", "not a mapping") is None
    assert index.note("stop", {"uid": "s", "run_start": "r"}) == "r"
    index.forget("r")
    assert len(index) == 0 and index.run_of("event", {"descriptor": "d"}) is None
