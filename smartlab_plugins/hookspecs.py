"""The contract between SmartLab and its analysis plugins.

A plugin is any object or module with functions marked `@hookimpl` whose
names match the hooks below; it implements only the hooks it needs. SmartLab
finds plugins through the `smartlab.plugins` entry-point group, exactly as a
third-party package would declare one, in its `pyproject.toml`:

```toml
[project.entry-points."smartlab.plugins"]
my_plugin = "my_package.my_plugin"
```

For one run, the hooks are called in this order, always on the analysis
worker and never on the RunEngine thread:

```text
smartlab_describe()                     once, when the plugin is registered
smartlab_start_run(run)                 at the start document
smartlab_analyze(run, stream, batch)    for each batch of events, in order
smartlab_finish_run(run, stop)          at the stop document
```

Every hook is called for one plugin at a time, so an exception in one plugin
never reaches another (the worker records it and carries on). This module
holds the hook specifications and the plain data types they exchange; it
imports nothing else of SmartLab's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pluggy

PROJECT_NAME = "smartlab"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class DataSpec:
    """Which event fields a plugin reads; the worker selects and checks them.

    A field of a stream's descriptor is passed to the plugin when its stream
    is in `streams`, its dtype is numeric, and either its name is in
    `fields` or (`fields` empty) the number of dimensions of one event's
    value is in `ndims`. `shape`, when set, is the exact shape one event's
    value must have. Values with NaN or infinity are refused before the plugin
    sees them unless `finite` is False.

    File-backed detectors (ophyd-async, areaDetector HDF5) declare a leading
    frames-per-event axis, `[N, H, W]`. When the frame, not the whole, fits
    `ndims` (a plugin of 2-D images), the plugin sees one `[H, W]` image per
    event: the frame itself for N = 1, the sum of the N frames for N > 1 (the
    exposures of one point; counts add). A plugin that wants the frames apart
    accepts 3-D values (`ndims=(3,)`) and gets `[N, H, W]` unchanged.

    Attributes:
        ndims: Numbers of dimensions of one event's value that select a field
            when `fields` is empty.
        streams: The streams whose fields the plugin reads.
        fields: The names of the fields to read; empty selects them by `ndims`.
        shape: The exact shape of one event's value, or None for any shape.
        finite: Refuse values with NaN or infinity before the plugin sees them.
    """

    ndims: tuple[int, ...] = (0, 1, 2)
    streams: tuple[str, ...] = ("primary",)
    fields: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    finite: bool = True

    def describe(self) -> str:
        """A short human description, for `smartlab plugins list`."""
        what = (
            ", ".join(self.fields) if self.fields else f"{'/'.join(map(str, self.ndims))}-D fields"
        )
        shape = f" of shape {'x'.join(map(str, self.shape))}" if self.shape else ""
        return f"{what}{shape} in {', '.join(self.streams)}"


@dataclass(frozen=True)
class ModelInfo:
    """The trained model behind a plugin, as its model card names it.

    Attributes:
        name: The model's name.
        sha256: The SHA-256 digest of the model's weights file.
        version: The model's version; empty when it has none.
    """

    name: str
    sha256: str
    version: str = ""


@dataclass(frozen=True)
class PluginInfo:
    """What a plugin is and what it accepts; published with its results.

    `stateless` declares that `smartlab_analyze` carries nothing from one
    batch to the next: it reads `run.state` only as `smartlab_start_run`
    left it (a model, say) and keeps nothing there that changes a later
    batch's results or `smartlab_finish_run`'s summary (a flag that a
    warning was logged is fine). Only such a plugin may have its batches
    analysed on a compute engine, each in whichever process is free there,
    with `smartlab_start_run` called once per run in each of them. The
    default, False, is the safe one: the batches stay in the worker, in order.
    `gpu` says that the plugin's work is faster on a GPU: on an engine whose
    workers declare a `GPU` resource, each of its tasks asks for one.

    `units` maps the names of the results the plugin publishes (scalar
    columns and arrays) to their units, published in each analysis node's
    metadata as `units`: `{"j1": "meV", "j1_std": "meV", "confidence": ""}`.
    `""` is dimensionless; a result left out has no stated unit. A unit that
    depends on the input names a descriptor field in braces, resolved from the
    run's descriptors (`resolve_units`): `"{operando_temperature}"`
    is that field's unit, and may be part of a longer unit (`"{ins_sqw}/meV"`).
    `{field}` in a name stands for each field the plugin reads, and in its
    unit for that field's unit: `{"{field}_max": "{field}", "{field}_argmax": "pixel"}`
    gives `beam_image_max` the unit of `beam_image`.

    Attributes:
        name: The plugin's name; must equal its entry-point name.
        version: The plugin's version, published with its results.
        accepts: Which event fields the plugin reads.
        summary: One line on what the plugin does.
        model: The trained model behind the plugin, or None.
        device: Where the plugin computes (`"cpu"`, `"cuda"`), published with its
            results.
        stateless: Its batches may be analysed apart, on a compute engine (above).
        gpu: Its work is faster on a GPU; on a compute engine each task asks for one.
        units: The units of its published results, by result name (above).
    """

    name: str
    version: str
    accepts: DataSpec
    summary: str = ""
    model: ModelInfo | None = None
    device: str = "cpu"
    stateless: bool = False
    gpu: bool = False
    units: Mapping[str, str] = field(default_factory=dict)

    def resolve_units(
        self,
        descriptors: Mapping[str, Mapping[str, Any]],
        fields: Mapping[str, Iterable[str]],
    ) -> dict[str, str | None]:
        """`units` with every `{...}` replaced, for one run, as its metadata records them.

        `descriptors` are the run's descriptors by stream and `fields` the
        fields the plugin reads, by stream. A unit that names a field the
        descriptors do not give a unit for is None: unknown, not dimensionless.
        """
        data_keys = {
            name: key
            for descriptor in descriptors.values()
            for name, key in descriptor.get("data_keys", {}).items()
        }
        read = list(dict.fromkeys(name for names in fields.values() for name in names))
        per_field = {name: unit for name, unit in self.units.items() if "{field}" in name}
        resolved = {
            name: _resolve_unit(unit, None, data_keys)
            for name, unit in self.units.items()
            if name not in per_field
        }
        for each in read:
            for name, unit in per_field.items():
                resolved[name.replace("{field}", each)] = _resolve_unit(unit, each, data_keys)
        return resolved


_FIELD_REFERENCE = re.compile(r"\{(\w+)\}")


def _resolve_unit(
    unit: str, field_name: str | None, data_keys: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """`unit` with each `{name}` replaced by that data key's unit; None if one has none."""
    missing = False

    def replace(match: re.Match[str]) -> str:
        nonlocal missing
        name = field_name if match[1] == "field" else match[1]
        found = data_keys.get(name, {}).get("units") if name else None
        missing = missing or not found
        return found or ""

    resolved = _FIELD_REFERENCE.sub(replace, unit)
    return None if missing else resolved


@dataclass
class RunContext:
    """One run as one plugin sees it.

    `state` is private to this plugin for this run: keep per-run state there
    (running sums, hidden states) rather than on the plugin object, so
    overlapping runs and replays never mix. `options` are this plugin's
    options for the run, from the start document:
    `RE(plan, smartlab={"options": {"<plugin>": {...}}})`.

    Attributes:
        uid: The run's uid, from its start document.
        start: The run's start document.
        descriptors: The run's descriptor documents by stream name, added as
            streams open.
        state: This plugin's private state for this run.
        options: This plugin's options for this run, from the start document.
    """

    uid: str
    start: Mapping[str, Any]
    descriptors: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scan_id(self) -> int | None:
        """The run's scan id, from its start document, or None."""
        return self.start.get("scan_id")

    @property
    def motors(self) -> tuple[str, ...]:
        """Names of the scanned motors, as the plan recorded them."""
        return tuple(self.start.get("motors") or ())


@dataclass(frozen=True)
class EventBatch:
    """Consecutive events of one stream, with their data stacked on axis 0.

    `data` holds only the fields the plugin's `DataSpec` selected,
    already read from external files where the documents referenced them;
    `context` holds the stream's other scalar fields (e.g. motor positions),
    for plugins that relate results to where they were measured. `len(batch)`
    is the number of events.

    Attributes:
        stream: The name of the stream the events belong to.
        seq_num: The events' sequence numbers, one per event.
        time: The events' timestamps, one per event.
        data: The selected fields' values by field name, one entry per event
            on axis 0.
        context: The stream's other scalar fields by name, one value per event.
    """

    stream: str
    seq_num: np.ndarray
    time: np.ndarray
    data: Mapping[str, np.ndarray]
    context: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seq_num)

    def take(self, index: np.ndarray | slice) -> EventBatch:
        """The events at `index`, as a batch of their own."""
        return EventBatch(
            stream=self.stream,
            seq_num=self.seq_num[index],
            time=self.time[index],
            data={k: v[index] for k, v in self.data.items()},
            context={k: v[index] for k, v in self.context.items()},
        )


@dataclass
class Results:
    """Per-event results of one batch: one row per event of the batch.

    `scalars` become columns of the stream's results table (each a 1-D array
    with one value per event); `arrays` are published as array nodes (each
    with one leading entry per event). `dims` optionally names the
    dimensions of an array after the event axis.

    Attributes:
        scalars: Columns of the results table by name, one value per event.
        arrays: Arrays to publish as array nodes by name, one entry per event
            on axis 0.
        dims: Names of an array's dimensions after the event axis, by array
            name; unnamed ones are `dim_1`, `dim_2`, ...
    """

    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)


@hookspec
def smartlab_describe() -> PluginInfo:
    """Describe this plugin: name, version, accepted data, model and device.

    Called once when the plugin is registered, and by `smartlab plugins list`.
    `name` must equal the plugin's entry-point name. Every plugin
    must implement this hook.
    """


@hookspec
def smartlab_start_run(run: RunContext) -> None:
    """Prepare for a new run (load a model, reset state in `run.state`).

    Called at the run's start document, before any of its events. `run.start`
    is the start document; `run.descriptors` fills in as streams open. The
    return value is ignored.
    """


@hookspec
def smartlab_analyze(run: RunContext, stream: str, batch: EventBatch) -> Results | None:
    """Analyse a batch of events from one stream of a running scan.

    Called on the analysis worker, never on the RunEngine thread, with events
    in order. `batch` holds the fields this plugin's `DataSpec` selected,
    stacked on axis 0; `run.descriptors[stream]` describes them. Return
    `Results` with one entry per event of the batch, or None if this
    plugin has nothing to say about `stream`. Raise on bad input with a
    message that names the field and what was expected: the error is recorded
    against the events of this batch and the scan goes on.
    """


@hookspec
def smartlab_finish_run(run: RunContext, stop: Mapping[str, Any]) -> dict[str, Any] | None:
    """Summarise a finished run.

    Called at the run's stop document, after its last batch. Return a dict of
    JSON-serialisable run-level results (numbers, strings, lists), published
    as the `summary` of this plugin's results for the run, or None.
    """
