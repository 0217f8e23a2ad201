"""The event rows a ``TiledWriter`` holds, written when asked, each row once even after a failure.

bluesky-tiled-plugins (2.0.12, pinned) writes a stream's held rows only once
``batch_size`` of them are held, or at the run's stop, and has no public way
to write them sooner. Its write of a batch is several requests: one per array
field (extending a zarr array), then one table append. When Tiled goes away
half way, some of those landed; writing the batch again then extends those
arrays a second time (a CI run found a beam profile one row longer than its
image). :class:`HeldRows` writes the batch again only where it did not land.

It reaches into private parts of ``TiledWriter``, as its ``_RunWriter.event``
does at ``batch_size``: the ``RunRouter``'s callbacks by start uid (one
``_RunWriter`` per run, as ``normalizer=None`` and no backup are used),
``_internal_data_cache``, ``_desc_nodes``, ``_internal_arrays``,
``_internal_tables`` and ``_write_internal_data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bluesky_tiled_plugins import TiledWriter


class HeldRows:
    """Write the event rows ``writer`` holds for a run, so that no row is written twice.

    Before a batch's first try it notes the length of each of the stream's
    arrays. After a failed try the rows are held again, whole; the next try
    asks Tiled for each array's length and leaves out the fields already
    written, and leaves out the batch if the table append landed (the last
    request of a batch). Not covered: a node *made* by a request whose answer
    was lost (the next try is refused as a conflict and counted as a failure).
    """

    def __init__(self, writer: TiledWriter) -> None:
        self._writer = writer
        #: Per (run, stream) with a batch tried and not yet written: its arrays' lengths before.
        self._before: dict[tuple[str, str], dict[str, int]] = {}
        #: Per (run, stream): rows written to its table so far.
        self._table_rows: dict[tuple[str, str], int] = {}

    def count(self, run_uid: str | None) -> int:
        """Event rows held for the run, in all its streams."""
        return sum(
            len(rows)
            for run_writer in self._run_writers(run_uid)
            for rows in run_writer._internal_data_cache.values()
        )

    def write(self, run_uid: str | None) -> None:
        """Write every row held for the run now; raises what the first failed request raised.

        Rows of a failed write stay held, whole, for the next call.
        """
        for run_writer in self._run_writers(run_uid):
            for stream, rows in run_writer._internal_data_cache.items():
                if rows:
                    self._write_stream(run_uid or "", run_writer, stream, rows)

    def forget(self, run_uid: str | None) -> None:
        """Drop what is noted about a run (after its stop)."""
        for state in (self._before, self._table_rows):
            for key in [key for key in state if key[0] == (run_uid or "")]:
                del state[key]

    def _run_writers(self, run_uid: str | None) -> list[Any]:
        return list(self._writer._run_router._factory_cbs_by_start.get(run_uid, ()))

    def _write_stream(self, run_uid: str, run_writer: Any, stream: str, rows: list[dict]) -> None:
        key = (run_uid, stream)
        if key in self._before:  # tried before: leave out what landed
            self._leave_out_written(run_writer, stream, rows, self._before[key], key)
            if not rows:
                del self._before[key]
                return
        else:
            self._before[key] = {
                path: client.shape[0] for path, client in _arrays(run_writer, stream).items()
            }
        kept = [dict(row) for row in rows]
        try:
            run_writer._write_internal_data(rows, desc_node=run_writer._desc_nodes[stream])
        except Exception:
            # It takes the array fields out of the rows as it writes them: put them back.
            rows[:] = kept
            raise
        self._table_rows[key] = self._table_rows.get(key, 0) + len(kept)
        rows.clear()
        del self._before[key]

    def _leave_out_written(
        self,
        run_writer: Any,
        stream: str,
        rows: list[dict],
        before: dict[str, int],
        key: tuple[str, str],
    ) -> None:
        """Take out of ``rows`` the fields (or, if the table has them, all) that landed."""
        written = self._table_rows.get(key, 0)
        tables = _tables(run_writer, stream)
        if tables and all(_row_count(table) >= written + len(rows) for table in tables):
            self._table_rows[key] = written + len(rows)
            rows.clear()
            return
        for path, client in _arrays(run_writer, stream).items():
            client.refresh()
            if client.shape[0] >= before.get(path, 0) + len(rows):
                field = path.split("/", 1)[1]
                for row in rows:
                    row.pop(field, None)


def _arrays(run_writer: Any, stream: str) -> dict[str, Any]:
    """The stream's array nodes made so far, by ``"stream/field"``."""
    return {
        path: client
        for path, client in run_writer._internal_arrays.items()
        if path.split("/", 1)[0] == stream
    }


def _tables(run_writer: Any, stream: str) -> list[Any]:
    """The stream's table nodes made so far (``internal``, or ``internal_0``… when split)."""
    return [
        client
        for name, client in run_writer._internal_tables.items()
        if name == stream or (name.startswith(f"{stream}_") and name[len(stream) + 1 :].isdigit())
    ]


def _row_count(table: Any) -> int:
    """Rows Tiled holds in a table, reading one column."""
    table.refresh()
    columns = table.structure().columns
    return len(table.read(columns=columns[:1])) if columns else 0
