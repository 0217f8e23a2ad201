"""Hostile input: generated document streams against the assembler, the worker and SmartLab.

Every stream mixes runs that are valid with runs whose documents are mutated
(keys dropped, values of the wrong type, NaN/inf data, arrays of the wrong
shape or huge, unknown names, non-dict documents, shuffled order, events of
unknown descriptors, stops before starts, duplicate uids, non-string keys)
and with free-form garbage. The properties checked are the promises of the
callback: nothing raises, each document is either used or rejected with a
message that says what is wrong with it, valid runs among the garbage are
analysed in full, and nothing is kept once its run is over.

The three fuzz tests together feed well over 10,000 documents; each asserts
its own share (``MIN_DOCUMENTS``), so a change that silently shrinks the
search fails instead of passing with less. They take about a minute on two
cores.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_publisher import MemoryPublisher
from ophyd.sim import det, det1

from smartlab_plugins.assembly.batching import BatchAssembler, DocumentProblem, RawBatch
from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.manager import PluginManager
from smartlab_plugins.protocol import Limits, Shipment
from smartlab_plugins.results import find_analyses, read_errors, read_events
from smartlab_plugins.worker import Worker

#: Documents each fuzz test must have fed (the three add up to more than 10,000).
MIN_DOCUMENTS = {"assembler": 6_000, "worker": 2_000, "smartlab": 2_000}
#: The longest message a problem may carry, whatever the document held.
MAX_MESSAGE = 700
#: Elements of a "huge" array: 2**19 float64 values, 4 MiB.
HUGE = 2**19

#: Documents fed so far, per fuzz test.
FED: dict[str, int] = dict.fromkeys(MIN_DOCUMENTS, 0)

FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,  # nothing written into the repository; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: What a rejection says when the document is fine but its run or descriptor is not there.
CONTEXT_REASONS = (
    "refers to unknown",
    "no open run with uid",
    "already received",
    "already open",
)
#: Required keys and their schema types, per document (start/descriptor/stop/event/event_page).
REQUIRED: dict[str, dict[str, str]] = {
    "start": {"uid": "string", "time": "number"},
    "descriptor": {"uid": "string", "run_start": "string", "time": "number", "data_keys": "object"},
    "stop": {"uid": "string", "run_start": "string", "time": "number", "exit_status": "string"},
    "event": {
        "uid": "string",
        "descriptor": "string",
        "seq_num": "integer",
        "time": "number",
        "data": "object",
        "timestamps": "object",
    },
    "event_page": {
        "uid": "array",
        "descriptor": "string",
        "seq_num": "array",
        "time": "array",
        "data": "object",
        "timestamps": "object",
    },
}
#: Values of another JSON type than the one named.
WRONG_TYPED: dict[str, list[Any]] = {
    "string": [5, None, ["a"], {"a": 1}, 1.5, True],
    "number": ["soon", None, [1.0], {"t": 1}, True],
    "integer": [1.5, "1", None, True, [1]],
    "object": ["text", 5, [1, 2], None],
    "array": ["text", 5, None, {"a": [1]}],
}
#: Odd values to put anywhere: every JSON type, non-finite floats, big ints, numpy, non-JSON.
ODD_VALUES: list[Any] = [
    None,
    True,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    2**70,
    -(2**63) - 1,
    "",
    "x" * 1000,
    "\x00\udcff",
    [],
    {},
    [[1], [2, 3]],
    {"a": {"b": [None, math.nan]}},
    np.arange(3),
    np.float64("nan"),
    np.zeros((2, 0)),
    b"bytes",
    (1, 2),
    frozenset({1}),
    object(),
]
BAD_NAMES: list[Any] = ["gossip", "", "Event", "events", None, 5, b"event", ("event",), ["start"]]


@dataclass
class Fed:
    """One generated document and what feeding it must lead to.

    ``expect`` is ``"valid"`` (untouched), ``"reject"`` (a problem naming
    ``fragment``), ``"reject_or_context"`` (a problem naming ``fragment``, or
    one saying that its run or descriptor is unknown), ``"accept_or_context"``
    (used, or refused for its context) or ``"any"`` (only the general rules).
    """

    name: Any
    doc: Any
    run: str | None = None
    expect: str = "valid"
    fragment: str | tuple[str, ...] = ""  # what the rejection must say (any one of a tuple)
    tags: tuple[float, ...] = ()  # the time of each event the document carries: unique tags
    tagged: bool = True  # whether rows handed on can be told by their time

    def __repr__(self) -> str:  # short: falsifying examples stay readable with huge arrays
        keys = sorted(map(str, self.doc)) if isinstance(self.doc, dict) else type(self.doc)
        return f"Fed({self.name!r}, {keys}, {self.expect}, {self.fragment!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis prints
        printer.text(repr(self))


@dataclass
class RunPlan:
    """The documents of one generated run and how it was spoiled (if at all)."""

    uid: str
    docs: list[Fed]
    mode: str  # "pristine", "nan" (non-finite data only), "broken" or "shuffled"
    rows: dict[float, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    nan_tags: set[float] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"RunPlan({self.uid[:8]}, {self.mode}, {self.docs})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def clean(self) -> bool:
        """Whether every event must arrive: nothing that breaks the run was done to it."""
        return self.mode in ("pristine", "nan")


@dataclass
class Stream:
    """Documents in the order they are fed, and the runs they were made from."""

    docs: list[Fed]
    runs: list[RunPlan]

    def __repr__(self) -> str:
        return f"Stream({len(self.docs)} docs, runs {[r.mode for r in self.runs]}, {self.docs})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


Pick = Callable[[int, int], int]  # pick(lo, hi): an integer in [lo, hi]


class StreamBuilder:
    """Builds a document stream from a source of integers (hypothesis, or a seeded RNG).

    Drawing only small integers keeps hypothesis fast and its shrinking
    meaningful; the array contents come from a numpy generator seeded by one draw.
    """

    _tags = itertools.count(1)

    def __init__(self, pick: Pick, huge: bool = True, analysed: int = 100) -> None:
        """``huge``: some arrays of 4 MiB; ``analysed``: percent of runs plugins analyse."""
        self.pick = pick
        self.huge = huge
        self.analysed = analysed
        self.rng = np.random.default_rng(pick(0, 2**32 - 1))

    def choice(self, options: list[Any]) -> Any:
        return options[self.pick(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        return self.pick(0, 99) < percent

    # -- whole streams ------------------------------------------------------

    def stream(self, max_runs: int = 3, max_garbage: int = 6) -> Stream:
        runs = [self.run() for _ in range(self.pick(1, max_runs))]
        garbage = [self.garbage() for _ in range(self.pick(0, max_garbage))]
        lanes = [list(run.docs) for run in runs] + [[g] for g in garbage]
        docs: list[Fed] = []
        while any(lanes):  # interleave, keeping each run's order
            lane = self.choice([lane for lane in lanes if lane])
            docs.append(lane.pop(0))
        return Stream(docs, runs)

    # -- one run ------------------------------------------------------------

    def run(self) -> RunPlan:
        uid = str(uuid.uuid4())
        start = {"uid": uid, "time": 1.0, "scan_id": self.pick(1, 99), "plan_name": "fuzz"}
        if not self.chance(self.analysed):
            start["smartlab"] = False  # no plugin for this run: it is still routed and checked
        docs = [Fed("start", start, uid)]
        descriptors = [self.descriptor(uid, "primary")]
        if self.chance(30):
            descriptors.append(self.descriptor(uid, "baseline"))
        docs += [Fed("descriptor", d, uid) for d in descriptors]
        plan = RunPlan(uid, docs, self.choice(["pristine", "nan", "broken", "broken", "shuffled"]))
        seq = dict.fromkeys((d["uid"] for d in descriptors), 0)
        for _ in range(self.pick(0, 8)):
            descriptor = self.choice(descriptors)
            docs.append(self.events(plan, descriptor, seq))
        stop = {"uid": str(uuid.uuid4()), "run_start": uid, "time": 2.0, "exit_status": "success"}
        docs.append(Fed("stop", stop, uid))
        if plan.mode == "nan":
            for _ in range(self.pick(1, 3)):
                self.poison(plan)
        elif plan.mode == "broken":
            for _ in range(self.pick(1, 3)):
                self.mutate(plan)
        elif plan.mode == "shuffled":
            order = sorted(range(len(docs)), key=lambda _: self.pick(0, 1000))
            plan.docs = [docs[i] for i in order]
            for fed in plan.docs:
                fed.expect = "any"
        return plan

    def descriptor(self, run_uid: str, name: str) -> dict[str, Any]:
        data_keys: dict[str, dict[str, Any]] = {
            "x": {"source": "sim", "dtype": "number", "shape": []}
        }
        if self.chance(60):
            length = self.choice([1, 4, 16] + ([HUGE] if self.huge and self.chance(3) else []))
            data_keys["profile"] = {"source": "sim", "dtype": "array", "shape": [length]}
        if self.chance(40):
            data_keys["image"] = {"source": "sim", "dtype": "array", "shape": [3, 5]}
        if self.chance(40):
            data_keys["count"] = {"source": "sim", "dtype": "integer", "shape": []}
        return {
            "uid": str(uuid.uuid4()),
            "run_start": run_uid,
            "time": 1.5,
            "name": name,
            "data_keys": data_keys,
            "object_keys": {"sim": list(data_keys)},
            "configuration": {},
            "hints": {},
        }

    def row(self, data_keys: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for key, spec in data_keys.items():
            if spec["dtype"] == "integer":
                row[key] = int(self.rng.integers(0, 1000))
            elif spec["shape"]:
                row[key] = self.rng.random(spec["shape"])
            else:
                row[key] = float(self.rng.random())
        return row

    def events(self, plan: RunPlan, descriptor: dict[str, Any], seq: dict[str, int]) -> Fed:
        """An event, or an event page of up to 5 rows, for ``descriptor``."""
        n = self.pick(1, 5) if self.chance(35) else 0
        rows, tags, seq_nums = [], [], []
        for _ in range(max(n, 1)):
            seq[descriptor["uid"]] += 1
            tag = float(next(self._tags))
            rows.append(self.row(descriptor["data_keys"]))
            tags.append(tag)
            seq_nums.append(seq[descriptor["uid"]])
            plan.rows[tag] = (descriptor["name"], seq_nums[-1], rows[-1])
        keys = list(descriptor["data_keys"])
        if n == 0:
            event = {
                "uid": str(uuid.uuid4()),
                "descriptor": descriptor["uid"],
                "seq_num": seq_nums[0],
                "time": tags[0],
                "data": dict(rows[0]),
                "timestamps": dict.fromkeys(keys, 1.7),
                "filled": {},
            }
            return Fed("event", event, plan.uid, tags=tuple(tags))
        page = {
            "uid": [str(uuid.uuid4()) for _ in rows],
            "descriptor": descriptor["uid"],
            "seq_num": seq_nums,
            "time": tags,
            "data": {k: [r[k] for r in rows] for k in keys},
            "timestamps": {k: [1.7] * len(rows) for k in keys},
            "filled": {},
        }
        return Fed("event_page", page, plan.uid, tags=tuple(tags))

    # -- spoiling a run -----------------------------------------------------

    def _target(self, plan: RunPlan, names: tuple[str, ...]) -> Fed | None:
        candidates = [f for f in plan.docs if f.name in names and f.expect == "valid"]
        return self.choice(candidates) if candidates else None

    def poison(self, plan: RunPlan) -> None:
        """Put NaN or infinity into one value of one event: the event is still well-formed."""
        fed = self._target(plan, ("event", "event_page"))
        if fed is None:
            return
        value = self.choice([math.nan, math.inf, -math.inf])
        i = self.pick(0, len(fed.tags) - 1)
        data = fed.doc["data"]
        key = self.choice(list(data))
        row = data if fed.name == "event" else {k: v[i] for k, v in data.items()}
        current = row[key]
        if isinstance(current, np.ndarray):
            current = current.copy()
            current.flat[self.pick(0, current.size - 1)] = value
        elif isinstance(current, float):
            current = value
        else:  # an integer field: NaN makes it a float, still one value
            current = value
        if fed.name == "event":
            data[key] = current
        else:
            data[key][i] = current
        plan.rows[fed.tags[i]][2][key] = current
        plan.nan_tags.add(fed.tags[i])
        fed.expect = "accept_or_context"

    def mutate(self, plan: RunPlan) -> None:
        """Spoil one document of the run, noting what its rejection must say."""
        kind = self.choice(
            [
                "drop_key",
                "drop_key",
                "wrong_type",
                "wrong_type",
                "not_a_dict",
                "bad_name",
                "odd_key",
                "wrong_shape",
                "huge_wrong_shape",
                "missing_field",
                "unknown_descriptor",
                "unknown_run",
                "stop_first",
                "duplicate_start",
                "duplicate_descriptor",
                "duplicate_event",
                "short_page",
                "huge_seq_num",
                "bad_filled",
                "odd_value",
            ]
        )
        getattr(self, f"_{kind}")(plan)

    def _drop_key(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            key = self.choice(list(REQUIRED[fed.name]))
            del fed.doc[key]
            fed.expect, fed.fragment = "reject", f"'{key}'"

    def _wrong_type(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            key, kind = self.choice(list(REQUIRED[fed.name].items()))
            fed.doc[key] = copy.deepcopy(self.choice(WRONG_TYPED[kind]))
            fed.expect, fed.fragment = "reject", (f"'{key}'", f"(at {key}")

    def _not_a_dict(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            fed.doc = self.choice([None, "start", 5, [("uid", "u")], list(fed.doc.items())])
            fed.expect, fed.fragment = "reject", "expected a dict"

    def _bad_name(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            fed.name = self.choice(BAD_NAMES)
            fed.expect, fed.fragment = "reject", "unknown document name"

    def _odd_key(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            fed.doc[self.choice([1, None, ("t",), 2.5])] = "value"
            fed.expect, fed.fragment = "reject", "keys must be strings"

    def _an_event_field(self, plan: RunPlan) -> tuple[Fed, str] | None:
        """An unspoiled event (or page) of the run and one of its fields."""
        fed = self._target(plan, ("event", "event_page"))
        if fed is None or not self._first_row(fed):
            return None
        return fed, self.choice(list(self._first_row(fed)))

    @staticmethod
    def _first_row(fed: Fed) -> dict[str, Any]:
        data = fed.doc["data"]
        return data if fed.name == "event" else {k: v[0] for k, v in data.items()}

    def _set_first(self, fed: Fed, key: str, value: Any) -> None:
        if fed.name == "event":
            fed.doc["data"][key] = value
        else:
            fed.doc["data"][key][0] = value

    def _wrong_shape(self, plan: RunPlan, size: int | None = None) -> None:
        found = self._an_event_field(plan)
        if found is not None:
            fed, key = found
            shape = np.shape(self._first_row(fed)[key])
            wrong = (size,) if size else self.choice([(*shape, 2), (7,) if shape != (7,) else (8,)])
            self._set_first(fed, key, np.ones(wrong))
            fed.expect, fed.fragment = "reject_or_context", f"field {key!r} has shape"

    def _huge_wrong_shape(self, plan: RunPlan) -> None:
        self._wrong_shape(plan, size=HUGE + 1 if self.huge else 1000)

    def _missing_field(self, plan: RunPlan) -> None:
        found = self._an_event_field(plan)
        if found is not None:
            fed, key = found
            del fed.doc["data"][key]
            fed.expect, fed.fragment = (
                "reject_or_context",
                f"['{key}'] of the descriptor are missing",
            )

    def _unknown_descriptor(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("event", "event_page"))
        if fed is not None:
            fed.doc["descriptor"] = "nowhere-" + str(uuid.uuid4())
            fed.expect, fed.fragment = "reject", "refers to unknown descriptor 'nowhere-"

    def _unknown_run(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("descriptor", "stop"))
        if fed is not None:
            fed.doc["run_start"] = "nowhere-" + str(uuid.uuid4())
            fed.expect, fed.fragment = "reject", "no open run with uid 'nowhere-"

    def _stop_first(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("stop",))
        if fed is not None:
            plan.docs.remove(fed)
            plan.docs.insert(0, fed)
            fed.expect, fed.fragment = "reject", "no open run with uid"

    def _duplicate(self, plan: RunPlan, name: str, expect: str, fragment: str) -> None:
        fed = self._target(plan, (name,))
        if fed is not None:
            fed.expect = "accept_or_context"  # the original: its copy comes after it
            twin = Fed(fed.name, copy.deepcopy(fed.doc), plan.uid, expect, fragment, fed.tags)
            plan.docs.insert(plan.docs.index(fed) + 1, twin)

    def _duplicate_start(self, plan: RunPlan) -> None:
        self._duplicate(plan, "start", "reject", "a run with this uid is already open")

    def _duplicate_descriptor(self, plan: RunPlan) -> None:
        self._duplicate(plan, "descriptor", "reject_or_context", "was already received")

    def _duplicate_event(self, plan: RunPlan) -> None:
        self._duplicate(plan, "event", "accept_or_context", "")  # event uids are not remembered

    def _short_page(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("event_page",))
        if fed is not None:
            column = self.choice(["time", "seq_num", "uid"])
            fed.doc[column] = fed.doc[column] + fed.doc[column][:1]
            fed.expect, fed.fragment = "reject", "columns differ in length"

    def _huge_seq_num(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("event",))
        if fed is not None:
            fed.doc["seq_num"] = self.choice([2**64, -(2**70)])
            fed.expect, fed.fragment = "reject_or_context", "does not fit in 64 bits"

    def _bad_filled(self, plan: RunPlan) -> None:
        fed = self._target(plan, ("event",))
        if fed is not None:
            fed.doc["filled"] = self.choice([[], "x", 0])
            fed.expect, fed.fragment = "reject", "'filled'"

    def _odd_value(self, plan: RunPlan) -> None:
        fed = self._target(plan, tuple(REQUIRED))
        if fed is not None:
            key = self.choice(list(fed.doc))
            fed.doc[key] = self.choice(ODD_VALUES)
            fed.expect = "any"
            if key == "time" and fed.tags:  # an odd but valid time (-0.0) is no longer its tag
                fed.tags, fed.tagged = (fed.doc[key],), False

    # -- garbage from nowhere -----------------------------------------------

    def garbage(self) -> Fed:
        """A document of no run: a random name and a random (maybe non-dict) body."""
        names = [*REQUIRED, "resource", "datum", "datum_page", "stream_resource"]
        names += ["stream_datum", "bulk_events", "bulk_datum", *BAD_NAMES]
        name = self.choice(names)
        if self.chance(15):
            return Fed(name, self.choice(ODD_VALUES), expect="any")
        keys = ["uid", "run_start", "descriptor", "resource", "seq_num", "time", "data"]
        keys += ["timestamps", "data_keys", "datum_id", "stream_resource", "x"]
        doc = {self.choice(keys): self.choice(ODD_VALUES) for _ in range(self.pick(0, 6))}
        if self.chance(50):
            doc["uid"] = str(uuid.uuid4())
        return Fed(name, doc, expect="any")


@st.composite
def streams(draw: st.DrawFn, huge: bool = True) -> Stream:
    """Hypothesis: one generated document stream."""
    return StreamBuilder(lambda lo, hi: draw(st.integers(lo, hi)), huge=huge).stream()


@st.composite
def json_garbage(draw: st.DrawFn) -> Fed:
    """Hypothesis: a free-form JSON-like document under any name."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    )
    values = leaves | st.lists(leaves, max_size=3) | st.dictionaries(st.text(max_size=3), leaves)
    keys = st.sampled_from(["uid", "run_start", "descriptor", "time", "seq_num", "data"])
    names = st.sampled_from([*REQUIRED, "datum", "resource", "stream_datum", "nope"])
    body = st.dictionaries(keys | st.text(max_size=4), values, max_size=5)
    return Fed(draw(names), draw(body), expect="any")


# -- the recording sink ------------------------------------------------------


class RecordingSink:
    """A BatchSink that records everything and checks what it is given, as the worker needs."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.streams: list[tuple[str, str]] = []
        self.batches: list[tuple[str, RawBatch]] = []
        self.closed: list[str] = []
        self.problems: list[DocumentProblem] = []

    def open_run(self, start: dict[str, Any]) -> None:
        self.opened.append(start["uid"])

    def open_stream(self, run_uid: str, descriptor: dict[str, Any]) -> None:
        self.streams.append((run_uid, descriptor.get("name", "primary")))

    def add_batch(self, run_uid: str, batch: RawBatch) -> None:
        assert batch.seq_num.dtype == np.int64 and batch.time.dtype == np.float64
        assert all(len(v) == len(batch) for v in batch.data.values())
        self.batches.append((run_uid, batch))

    def close_run(self, stop: dict[str, Any]) -> None:
        self.closed.append(stop["run_start"])

    def reject(self, problem: DocumentProblem) -> None:
        assert isinstance(problem.document, str)
        assert problem.run_uid is None or isinstance(problem.run_uid, str)
        assert problem.stream is None or isinstance(problem.stream, str)
        assert problem.seq_num is None or isinstance(problem.seq_num, int)
        hash(problem)  # the worker looks runs up by it
        message = str(problem)
        assert len(message) <= MAX_MESSAGE, message[:200]
        self.problems.append(problem)

    def rows(self) -> list[tuple[str, str, float, int, dict[str, Any]]]:
        """(run, stream, time, seq_num, data) of every event handed on so far."""
        return [
            (
                run,
                b.stream,
                float(b.time[i]),
                int(b.seq_num[i]),
                {k: v[i] for k, v in b.data.items()},
            )
            for run, b in self.batches
            for i in range(len(b))
        ]


def counts(sink: RecordingSink) -> tuple[int, int, int, int, int]:
    return (
        len(sink.problems),
        len(sink.opened),
        len(sink.streams),
        len(sink.closed),
        sum(len(b) for _, b in sink.batches),
    )


def says(messages: list[str], fragment: str | tuple[str, ...]) -> bool:
    """Whether one of ``messages`` contains ``fragment`` (or one of a tuple of them)."""
    wanted = (fragment,) if isinstance(fragment, str) else fragment
    return any(w in m for w in wanted for m in messages)


def check_outcome(fed: Fed, sink: RecordingSink, before: tuple[int, ...]) -> None:
    """The per-document rules: each document is used or rejected, never both, never silently."""
    problems, opened, streams_, closed, rows = (
        now - then for now, then in zip(counts(sink), before, strict=True)
    )
    messages = [str(p) for p in sink.problems[len(sink.problems) - problems :]] if problems else []
    new_rows = sink.rows()[before[4] :]
    if fed.tagged:
        assert {t for _, _, t, _, _ in new_rows} <= set(fed.tags), "rows of another document"
    if fed.name == "start":
        assert (opened, problems) in ((1, 0), (0, 1)), messages
    elif fed.name == "descriptor":
        assert (streams_, problems) in ((1, 0), (0, 1)), messages
    elif fed.name == "event":
        assert (rows, problems) in ((1, 0), (0, 1)), messages
    elif fed.name == "event_page":
        n = len(fed.tags) if isinstance(fed.doc, dict) else 0
        assert (rows == 0 and problems == 1) or rows + problems == n, (rows, problems, messages)
    elif fed.name == "stop":
        assert closed == 1 or problems == 1, messages
    else:  # unknown names, and documents no generated run has: nothing can take them
        assert problems == 1 and rows == opened == streams_ == closed == 0, messages
    for message in messages:
        assert message.startswith("rejected "), message
    rejected = problems > 0 and rows < max(len(fed.tags), 1)
    if fed.expect == "reject":
        assert rejected and says(messages, fed.fragment), (fed, messages)
    elif fed.expect == "reject_or_context":
        assert rejected, (fed, messages)
        assert says(messages, fed.fragment) or says(messages, CONTEXT_REASONS), (fed, messages)
    elif fed.expect == "accept_or_context" and problems:
        assert any(w in m for w in CONTEXT_REASONS for m in messages), (fed, messages)


def check_clean_runs(stream: Stream, sink: RecordingSink) -> None:
    """Valid runs among the garbage give every event, in order, with its values (NaN kept)."""
    by_run: dict[str, list[tuple[str, float, int, dict[str, Any]]]] = {}
    for run, stream_name, time, seq_num, data in sink.rows():
        by_run.setdefault(run, []).append((stream_name, time, seq_num, data))
    for plan in stream.runs:
        if not plan.clean:
            continue
        assert plan.uid in sink.opened and plan.uid in sink.closed
        assert not [p for p in sink.problems if p.run_uid == plan.uid], sink.problems
        got = {time: (name, seq, data) for name, time, seq, data in by_run.get(plan.uid, [])}
        assert sorted(got) == sorted(plan.rows)
        for tag, (name, seq, data) in plan.rows.items():
            got_name, got_seq, got_data = got[tag]
            assert (got_name, got_seq) == (name, seq)
            assert set(got_data) == set(data)
            for key, value in data.items():
                assert np.array_equal(got_data[key], value, equal_nan=True), key
        for name in {name for name, _, _ in plan.rows.values()}:
            seqs = [seq for n, _, seq, _ in by_run[plan.uid] if n == name]
            assert seqs == sorted(seqs)


def close_leftovers(assembler: BatchAssembler) -> None:
    """Send a valid stop for every run still open (their own stop was lost or spoiled)."""
    for uid in assembler.open_runs:
        assembler(
            "stop",
            {"uid": str(uuid.uuid4()), "run_start": uid, "time": 3.0, "exit_status": "abort"},
        )


def assembler_state(assembler: BatchAssembler) -> int:
    """How many runs, normalizers and uids the assembler still holds."""
    return len(assembler._runs) + len(assembler._normalizers) + len(assembler._owner)


# -- A: the assembler alone ------------------------------------------------------


@settings(FUZZ_SETTINGS, max_examples=500)
@given(stream=streams(), extra=st.lists(json_garbage(), max_size=3))
def _assembler_property(stream: Stream, extra: list[Fed]) -> None:
    sink = RecordingSink()
    assembler = BatchAssembler(sink, max_batch=3)
    for fed in [*stream.docs, *extra]:
        before = counts(sink)
        assembler(fed.name, fed.doc)
        assembler.flush()  # as the worker does after each shipment
        check_outcome(fed, sink, before)
        FED["assembler"] += 1
    check_clean_runs(stream, sink)
    close_leftovers(assembler)
    assert assembler.open_runs == [] and assembler_state(assembler) == 0
    assert sorted(sink.opened) == sorted(sink.closed)


def test_assembler_rejects_every_hostile_document_and_keeps_valid_runs() -> None:
    """Fed generated streams, the assembler never raises; each document is used or rejected
    with a message naming what is wrong (the key, the field, the unknown uid); valid runs
    among the garbage arrive whole, NaN included; and no state outlives its run."""
    before = FED["assembler"]
    for _ in range(3):  # each call draws fresh examples, whose sizes vary with the draw
        _assembler_property()
        if FED["assembler"] - before >= MIN_DOCUMENTS["assembler"]:
            break
    assert FED["assembler"] - before >= MIN_DOCUMENTS["assembler"]


def test_runs_whose_stop_never_comes_are_closed_when_too_many_are_open() -> None:
    """Start documents without stops do not pile up: past the limit the oldest run is closed
    as aborted, with a problem saying why, so the assembler's memory stays bounded."""
    sink = RecordingSink()
    assembler = BatchAssembler(sink, max_open_runs=4)
    uids = [str(uuid.uuid4()) for _ in range(10)]
    for uid in uids:
        assembler("start", {"uid": uid, "time": 1.0})
    assert assembler.open_runs == uids[-4:]
    assert sink.closed == uids[:6]
    assert len(sink.problems) == 6
    assert "its stop document never came" in str(sink.problems[0])
    assert sink.problems[0].run_uid == uids[0]


# -- A2: the real worker, with a publisher that keeps what it is given ----------------


class ErrorLog(logging.Handler):
    """Collects the messages of error records; keeps them out of pytest's log capture."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    """SmartLab's error log, captured here only (nothing accumulates in pytest's capture)."""
    logger = logging.getLogger("smartlab_plugins")
    handler, propagate = ErrorLog(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.propagate = propagate


def shipments(stream: Stream, pick: Pick) -> Iterator[list[tuple[Any, Any]]]:
    """The stream cut into shipments of 1 to 20 documents, as the feeder sends them."""
    docs = [(fed.name, fed.doc) for fed in stream.docs]
    while docs:
        size = pick(1, 20)
        yield docs[:size]
        docs = docs[size:]


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


def test_worker_survives_hostile_streams_and_analyses_the_valid_runs(
    plugins: PluginManager, error_log: ErrorLog
) -> None:
    """The real worker, fed generated streams in shipments, never raises; every rejected
    document is logged with its reason; valid runs are analysed in full (peak_stats), and
    each NaN/inf value is recorded against its event instead of reaching the plugin."""

    @settings(FUZZ_SETTINGS, max_examples=150)
    @given(stream=streams(huge=False), sizes=st.randoms(use_true_random=False))
    def prop(stream: Stream, sizes: random.Random) -> None:
        publisher = MemoryPublisher()
        worker = Worker(plugins, publisher, enabled=["peak_stats"], limits=Limits(max_batch=4))
        error_log.messages.clear()
        for docs in shipments(stream, sizes.randint):
            worker.process(Shipment(docs))
            FED["worker"] += len(docs)
        for fed in stream.docs:
            if fed.expect == "reject":
                assert says(error_log.messages, fed.fragment), fed
        for plan in stream.runs:
            if not plan.clean:
                continue
            (key,) = publisher.of_run(plan.uid)
            analysis = publisher.analyses[key]
            primary = [tag for tag, (name, _, _) in plan.rows.items() if name == "primary"]
            poisoned = {plan.rows[t][1] for t in plan.nan_tags if t in primary}
            assert analysis["status"] == ("partial" if poisoned else "complete")
            assert analysis["events"] == len(primary) - len(poisoned)
            assert analysis["rejected"] == len(poisoned)
            flagged = {e.seq_num for e in publisher.errors[key] if "NaN/inf" in e.message}
            assert flagged == poisoned
        worker.close()
        assert worker.stats()["open_runs"] == []

    before = FED["worker"]
    for _ in range(3):  # each call draws fresh examples, whose sizes vary with the draw
        prop()
        if FED["worker"] - before >= MIN_DOCUMENTS["worker"]:
            break
    assert FED["worker"] - before >= MIN_DOCUMENTS["worker"]


# -- B: the real SmartLab, beside real scans, memory watched ----------------------


def rss_bytes() -> int:
    """This process' resident memory, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_smartlab_never_raises_and_stays_bounded_beside_real_scans(
    RE: RunEngine, make_smartlab: Callable[..., Any], client: Any, error_log: ErrorLog
) -> None:
    """A real SmartLab is called with thousands of generated documents, before, between and
    inside real RunEngine scans (a relay slips garbage in beside each scan document): no call
    raises, every scan's peak_stats analysis is complete in Tiled, and the process' memory
    grows by less than a tenth of the huge arrays that went through it, so nothing is kept.

    ``raw=False``: the generated runs' array fields would each cost the raw writer a ~25 s
    stall (Tiled answers 500 to TiledWriter's table of list columns, and the client retries);
    the raw path is not what this test is about.
    """
    smartlab = make_smartlab(plugins=["peak_stats"], raw=False)
    rng = random.Random(20_240_917)
    builder = StreamBuilder(rng.randint, huge=False, analysed=20)  # Tiled writes cost the most
    fed = 0

    def call(name: Any, doc: Any) -> None:
        nonlocal fed
        smartlab(name, doc)  # SmartLab.__call__: must not raise, whatever it is given
        fed += 1

    def relay(name: str, doc: dict[str, Any]) -> None:
        """The RunEngine's subscriber: garbage first, then the real document."""
        for _ in range(5):
            garbage = builder.garbage()
            call(garbage.name, garbage.doc)
        call(name, doc)

    RE.subscribe(relay)
    beam = make_devices(seed=5)["beam"]  # 1-D profiles and 2-D images: per-event results

    def scan() -> Any:
        return bp.count([beam, det, det1], num=5)

    huge = np.ones(HUGE)  # 4 MiB, sent again and again in events that no descriptor owns
    huge_bytes = 0

    def round_of_garbage() -> None:
        nonlocal huge_bytes
        for item in builder.stream(max_runs=8, max_garbage=120).docs:
            call(item.name, item.doc)
        for _ in range(8):
            event = {"uid": str(uuid.uuid4()), "descriptor": str(uuid.uuid4()), "seq_num": 1}
            call("event", {**event, "time": 1.0, "data": {"x": huge.copy()}, "timestamps": {}})
            huge_bytes += huge.nbytes

    uids: list[str] = []
    for _ in range(3):  # warm-up: every code path, cache and connection once
        round_of_garbage()
        uids += RE(scan())
    assert smartlab.flush()
    baseline, huge_bytes = rss_bytes(), 0
    while fed < MIN_DOCUMENTS["smartlab"] or huge_bytes < 256 * 2**20:
        round_of_garbage()
        uids += RE(scan())
    assert smartlab.flush()
    growth = rss_bytes() - baseline
    FED["smartlab"] += fed

    assert fed >= MIN_DOCUMENTS["smartlab"]
    assert growth < huge_bytes / 10, f"RSS grew {growth / 2**20:.0f} MiB"
    assert smartlab.dropped_total == 0
    assert any("refers to unknown descriptor" in m for m in error_log.messages)
    for uid in uids:
        (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
        outcome = {k: analysis.metadata[k] for k in ("status", "events", "errors")}
        assert outcome == {"status": "complete", "events": 5, "errors": 0}, read_errors(analysis)
        table = read_events(analysis)
        assert list(table["seq_num"]) == [1, 2, 3, 4, 5]
        assert np.isfinite(table["beam_profile_centroid"]).all()
        assert set(analysis.metadata["summary"]) >= {"det", "beam_profile_sum"}


def test_an_essential_document_that_is_an_array_is_shipped_not_unsendable(
    make_smartlab: Callable[..., Any],
) -> None:
    """A "descriptor" whose body is an ndarray is queued and shipped (the worker rejects it
    with "expected a dict"), so SmartLab must count it as accepted, not as unsendable."""
    smartlab = make_smartlab(plugins=[], raw=False)
    smartlab("descriptor", np.arange(3))
    assert smartlab.flush()
    assert smartlab.unsendable == 0
    assert smartlab.status()["accepted"] == 1
