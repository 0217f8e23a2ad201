"""What a plugin is given and what it may return: fields chosen by its ``DataSpec``, checked.

Pure functions: they say what is wrong and leave recording it to the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartlab_plugins.assembly.batching import RawBatch
from smartlab_plugins.hookspecs import DataSpec, EventBatch, Results

#: Result names a plugin may not use: the rows' own columns.
RESERVED_COLUMNS = frozenset({"seq_num", "time"})
#: numpy dtype kinds a plugin's fields may have.
NUMERIC_KINDS = frozenset("biuf")


@dataclass(frozen=True)
class InputProblem:
    """Something wrong with a plugin's input: for one event (``seq_num``), or all (-1)."""

    message: str
    seq_num: int = -1


@dataclass
class CheckedBatch:
    """A plugin's view of a raw batch: what it may analyse, and what was refused and why."""

    batch: EventBatch | None
    #: Events refused (not numeric, NaN or inf where the spec wants finite values).
    rejected: int = 0
    problems: list[InputProblem] = field(default_factory=list)


def select_fields(
    spec: DataSpec, stream: str, descriptor: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The fields of ``descriptor`` a plugin with ``spec`` reads, and problems found.

    Named fields that exist with the wrong shape or dtype are problems; for
    unnamed selection, fields that do not fit are simply not selected.
    """
    if stream not in spec.streams:
        return [], []
    data_keys = descriptor.get("data_keys", {})
    selected, problems = [], []
    candidates = spec.fields or tuple(data_keys)
    for name in candidates:
        key = data_keys.get(name)
        if key is None:
            continue
        shape = tuple(key.get("shape") or ())
        numeric = key.get("dtype") in ("number", "integer", "array")
        frame = shape[1:] if "external" in key and len(shape) not in spec.ndims else shape
        fits = len(frame) in spec.ndims and (spec.shape is None or frame == tuple(spec.shape))
        if numeric and fits:
            selected.append(name)
        elif spec.fields:
            wanted = f"shape {tuple(spec.shape)}" if spec.shape else f"{spec.ndims}-D"
            problems.append(
                f"field {name!r} has shape {shape} and dtype {key.get('dtype')!r}; "
                f"expected {wanted} numeric data"
            )
    return selected, problems


def framed_fields(spec: DataSpec, descriptor: Mapping[str, Any], selected: list[str]) -> set[str]:
    """The selected fields a plugin sees one frame at a time (see :func:`per_frame`).

    A file-backed field declared ``[N, *frame]`` whose frame, not the whole,
    fits the plugin's ``ndims`` (an ophyd-async detector's ``[1, H, W]`` for
    a plugin of 2-D images).
    """
    data_keys = descriptor.get("data_keys", {})
    framed = set()
    for name in selected:
        key = data_keys.get(name, {})
        shape = tuple(key.get("shape") or ())
        if "external" in key and len(shape) - 1 in spec.ndims and len(shape) not in spec.ndims:
            framed.add(name)
    return framed


def per_frame(values: np.ndarray) -> np.ndarray:
    """A batch of ``[N, *frame]`` events as a plugin of frames sees it: the frame for N = 1,
    the sum of the N frames (one point's exposures, counts add) for N > 1."""
    if values.ndim < 2:
        return values
    return values[:, 0] if values.shape[1] == 1 else values.sum(axis=1)


def checked_batch(
    spec: DataSpec, raw: RawBatch, names: list[str], framed: set[str]
) -> CheckedBatch:
    """The plugin's view of ``raw``: fields ``names`` (``framed`` ones per frame) and the
    other numeric 1-D fields as context, without the events its spec refuses."""
    keep = np.ones(len(raw), dtype=bool)
    problems: list[InputProblem] = []
    for name in names:
        values = raw.data[name]
        if values.dtype.kind not in NUMERIC_KINDS:
            problem = InputProblem(f"field {name!r} is not numeric (dtype {values.dtype})")
            return CheckedBatch(None, rejected=len(raw), problems=[*problems, problem])
        if spec.finite:
            flat = values.reshape(len(values), -1)
            bad = ~np.isfinite(flat).all(axis=1)
            for i in np.flatnonzero(bad & keep):
                count = int((~np.isfinite(flat[i])).sum())
                problems.append(
                    InputProblem(
                        f"field {name!r} has {count} NaN/inf value(s)", int(raw.seq_num[i])
                    )
                )
            keep &= ~bad
    context = {
        k: v
        for k, v in raw.data.items()
        if k not in names and v.ndim == 1 and v.dtype.kind in NUMERIC_KINDS
    }
    data = {n: per_frame(raw.data[n]) if n in framed else raw.data[n] for n in names}
    batch = EventBatch(raw.stream, raw.seq_num, raw.time, data, context)
    return CheckedBatch(batch if keep.all() else batch.take(keep), int((~keep).sum()), problems)


def check_results(results: Results, n: int) -> None:
    """Raise ValueError unless ``results`` has one entry per event of an ``n``-event batch."""
    if not isinstance(results, Results):
        raise TypeError(
            f"smartlab_analyze must return Results or None, got {type(results).__name__}"
        )
    for kind, values in (("scalar", results.scalars), ("array", results.arrays)):
        for name, value in values.items():
            if name in RESERVED_COLUMNS:
                raise ValueError(f"result name {name!r} is reserved")
            length = len(value) if np.ndim(value) else 0
            if length != n:
                raise ValueError(
                    f"{kind} result {name!r} has {length} entries for a batch of {n} events"
                )
