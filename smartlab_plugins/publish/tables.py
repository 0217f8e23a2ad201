"""Rows for Tiled's appendable tables: one Arrow schema per table, kept batch after batch.

An appendable table (SQL storage) takes ``append_partition`` calls of Arrow
tables with exactly its schema. A plugin's scalars may come as float32 in one
batch and float64 in the next, or miss a column once; these helpers give every
batch of a table the schema of its first one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa


def _column(values: Any) -> pa.Array:
    """One column in the widest type of its kind (SQL storage keeps int64, float64, bool, text)."""
    array = np.asarray(values)
    if array.dtype.kind == "b":
        return pa.array(array, type=pa.bool_())
    if array.dtype.kind in "iu":
        return pa.array(array.astype(np.int64), type=pa.int64())
    if array.dtype.kind == "f":
        return pa.array(array.astype(np.float64), type=pa.float64())
    return pa.array([None if v is None else str(v) for v in array.tolist()], type=pa.string())


def rows(columns: Mapping[str, Any]) -> pa.Table:
    """An Arrow table of equal-length columns, in the types SQL storage keeps."""
    return pa.table({name: _column(values) for name, values in columns.items()})


def conform(table: pa.Table, schema: pa.Schema) -> tuple[pa.Table, list[str]]:
    """``table`` in ``schema``: missing columns null, others cast; and the columns dropped.

    Columns the schema does not have are dropped (and named, for the caller
    to report): a table's columns are fixed by its first batch.
    """
    dropped = [name for name in table.column_names if name not in schema.names]
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema), dropped
