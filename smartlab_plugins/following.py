"""Following an analysis as it is published, through Tiled's own subscriptions.

:func:`follow` hands a callback each batch of rows the moment Tiled has it,
in order and each row once, using nothing but ``tiled.client``: websocket
subscriptions (``node.subscribe()``) to wait for the analysis, its stream and
its ``events`` table to appear, then to the table's appends. No polling, no
SmartLab process.

Exactly once, in order: rows are delivered by increasing ``seq_num`` and a row
is passed on only if its ``seq_num`` is past the last one delivered. Whenever
the subscription (re)connects, it first reads the table as it is, then takes
the appends pushed after it; so a follower that starts mid-run, or whose
connection drops, gets everything it missed without gaps or repeats. (A table
made after following began is instead pushed whole from its first append, from
Tiled's cache, as the subscription opens: the first rows come sooner.) Tiled's
client reconnects by itself; if it gives up (the server away for longer than
its retries), the follower subscribes afresh once the server answers again.

A gap Tiled leaves, covered here: tiled 0.2.20's server starts listening for
a node's updates a moment *after* its client is told the websocket is
connected (it sends the schema first, then subscribes to its cache), so a
child made or a row appended in that moment is never pushed. On a busy
machine the moment lasted long enough for a follower to miss its analysis
being made and wait forever. So a wait for a child looks again on a widening
schedule (:data:`LOOK_AGAIN_S`), and for :data:`RESYNC_WINDOW_S` after each
connection a pushed batch that skips ``seq_num`` s, and the end of the window
itself, make the follower read the table again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
from tiled.client.stream import TableSubscription
from tiled.queries import Key

from smartlab_plugins.connection import preload_node_clients
from smartlab_plugins.layout import EVENTS_KEY, ROOT_KEY

# tiled's client imports its table client (and dask) inside the first request that meets a
# table, ~1-2 s: on import here, not while a follower finds its first rows.
preload_node_clients()

logger = logging.getLogger(__name__)

#: How often the follower's own thread looks at whether it was closed or lost its subscription.
CHECK_S = 0.2
#: Wait before subscribing afresh after Tiled's client gave up reconnecting.
RESUBSCRIBE_S = 2.0
#: While waiting for a child, seconds after subscribing at which to look for it again (then
#: every last one): a child made as the server starts listening is not pushed.
LOOK_AGAIN_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Seconds after each table (re)connection after which the table is read once more; until
#: then, a pushed batch that skips ``seq_num`` s makes the follower read the table first.
RESYNC_WINDOW_S = 2.0


class _Closed(Exception):
    """The follower was closed while waiting."""


class _ResyncingTableSubscription(TableSubscription):
    """A table subscription that, on every (re)connection, reads the table before the appends.

    Tiled resumes a dropped subscription from the last message's sequence
    number, which a restarted server no longer knows; reading the table on
    connecting covers that and a follower that starts mid-run. A table made
    after following began is not read on the first connection: the server
    is asked to push every append since the table was made (``start=1``),
    which it does right after the schema, so the first rows do not wait for a
    read. (Hooks
    ``_connect`` and reads ``_disconnect_event``, private to tiled 0.2.20's ``Subscription``,
    pinned.)
    """

    def __init__(self, node: Any, on_connect: Callable[[], None], replay: bool = False) -> None:
        super().__init__(node.context, node.path_parts)
        self.events = node  #: the table subscribed to
        self._on_connect = on_connect
        #: Whether the first connection asks the server for every append since the table was
        #: made (a table made after following began: a few appends, all in Tiled's cache).
        self._replay = replay
        self.connected_at = time.monotonic()  #: when it last (re)connected (monotonic)
        #: Whether the table was read again after :data:`RESYNC_WINDOW_S` on this connection.
        self.settled = False

    def _connect(self, start: int | None = None, max_size: int = 1_000_000) -> None:
        replay, self._replay = self._replay, False
        try:
            # from the table's first append (sequence 1), pushed as the connection opens; or from
            # now, and the read below covers what came before
            super()._connect(1 if replay else None, max_size=max_size)
        except RuntimeError as exc:  # "Cannot be restarted once stopped": closed while
            if self._disconnect_event.is_set():  # tiled's client was reconnecting; its loop
                raise OSError(f"closed while reconnecting: {exc}") from exc  # ends on OSError
            raise
        self.connected_at = time.monotonic()
        self.settled = False
        if replay:  # what the replay lacks (Tiled's cache full or expired), the window's read has
            return
        try:
            self._on_connect()
        except Exception as exc:  # the server went away between the two: reconnect
            raise ConnectionError(f"reading the table on connecting failed: {exc}") from exc


class Follower:
    """What :func:`follow` returns: close it (or leave its ``with`` block) to stop."""

    def __init__(
        self,
        client: Any,
        run_uid: str,
        plugin: str,
        callback: Callable[[pd.DataFrame], Any],
        stream: str = "primary",
        max_message_bytes: int = 64_000_000,
    ) -> None:
        self.run_uid = run_uid
        self.plugin = plugin
        self.stream = stream
        self.analysis: Any = None  #: the analysis node, once it exists
        self.rows_delivered = 0
        self.error: BaseException | None = None  #: why following stopped, if it failed
        self._client = client
        self._callback = callback
        self._max_size = max_message_bytes
        self._last_seq_num: int | None = None
        self._deliver_lock = threading.RLock()
        self._closed = threading.Event()
        self._subscriptions: list[Any] = []
        self._subscription: _ResyncingTableSubscription | None = None  #: the table's, once made
        self._subscribed = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"smartlab-follow-{plugin}-{run_uid[:8]}", daemon=True
        )
        self._thread.start()

    # -- the user's side ---------------------------------------------------------

    def wait_until_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the ``events`` table exists and is subscribed to; False on timeout."""
        return self._subscribed.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop following: no callback is called once this returns.

        Not to be called from the callback itself (the callback runs on the
        subscription's thread, which closing waits for).
        """
        self._closed.set()
        for subscription in list(self._subscriptions):
            _disconnect(subscription)
        self._thread.join(timeout)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed.is_set() else "following"
        return (
            f"<Follower {self.plugin} of run {self.run_uid[:8]} stream {self.stream!r}: "
            f"{state}, {self.rows_delivered} rows delivered>"
        )

    # -- the follower's thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            root = self._wait_for_child(self._client, key=ROOT_KEY)
            self.analysis = self._wait_for_child(root, match=self._is_our_analysis)
            self._log_step("found the analysis")
            # the stream and its table come in one round: often there once the analysis is
            events = _lookup(self.analysis, (self.stream, EVENTS_KEY))
            made_since = events is None  # then made since: its appends are all in Tiled's cache
            if made_since:
                stream = self._wait_for_child(self.analysis, key=self.stream)
                events = self._wait_for_child(stream, key=EVENTS_KEY)
            self._log_step("found its table")
            self._follow_table(events, replay=made_since)
        except _Closed:
            pass
        except Exception as exc:
            self.error = exc
            logger.error(
                "following %s of run %s stopped: %s: %s",
                self.plugin,
                self.run_uid[:8],
                type(exc).__name__,
                exc,
            )

    def _log_step(self, step: str) -> None:
        logger.debug(
            "following %s of run %s: %s %.3f s after starting",
            self.plugin,
            self.run_uid[:8],
            step,
            time.monotonic() - self._started,
        )

    def _is_our_analysis(self, metadata: dict[str, Any]) -> bool:
        return metadata.get("run_uid") == self.run_uid and metadata.get("plugin") == self.plugin

    def _wait_for_child(
        self,
        container: Any,
        key: str | None = None,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Any:
        """The child ``key`` (or whose metadata ``match``) of ``container``, once it exists.

        A child there already is taken at once (one request, no websocket:
        the analysis' stream and table usually come in one round, so once the
        analysis is pushed its table is often there). Otherwise subscribes to
        the container's new children first and looks at those there second, so
        a child made in between is not missed; then looks again at
        :data:`LOOK_AGAIN_S`, for a child made before the server listened.
        """
        found = self._existing_child(container, key, match)
        if found is not None:
            return found
        created: dict[str, Any] = {}
        arrived = threading.Event()

        def on_created(update: Any) -> None:
            if (key is not None and update.key == key) or (
                match is not None and match(update.metadata or {})
            ):
                created.setdefault("child", update.child())  # built from the message
                arrived.set()

        subscription = container.subscribe()
        subscription.child_created.add_callback(on_created)  # held weakly: kept alive here
        self._start(subscription)
        try:
            started = time.monotonic()
            for look_at in _look_again_times():
                found = self._existing_child(container, key, match)
                if found is not None:
                    return found
                while time.monotonic() - started < look_at:
                    if arrived.wait(CHECK_S):
                        return created["child"]
                    if self._closed.is_set():
                        raise _Closed
            raise AssertionError("unreachable: the schedule never ends")
        finally:
            self._subscriptions.remove(subscription)
            # tiled's disconnect waits up to its receive timeout (0.1 s): not on this path
            threading.Thread(target=_disconnect, args=(subscription,), daemon=True).start()

    def _existing_child(
        self, container: Any, key: str | None, match: Callable[[dict[str, Any]], bool] | None
    ) -> Any:
        if key is not None:
            return _lookup(container, (key,))
        found = container.search(Key("run_uid") == self.run_uid).search(
            Key("plugin") == self.plugin
        )
        candidates = [node for node in found.values() if match(dict(node.metadata))]
        if not candidates:
            return None
        return max(candidates, key=lambda node: node.metadata.get("started", 0))

    def _follow_table(self, events: Any, replay: bool = False) -> None:
        """Subscribe to the table's appends; subscribe afresh whenever Tiled's client gives up.

        With ``replay`` (a table made after following began), the first
        subscription asks for every append since the table was made instead of
        reading the table: the first rows come with the connection.
        """
        while not self._closed.is_set():
            subscription = _ResyncingTableSubscription(
                events, lambda: self._read_all(events), replay=replay
            )
            replay = False  # a subscription afresh reads the table
            on_rows = self._on_rows  # bound method: held weakly by the registry, kept here
            subscription.new_data.add_callback(on_rows)
            try:
                self._start(subscription)
            except Exception as exc:
                logger.warning(
                    "cannot subscribe to %s of run %s (%s); trying again in %.0f s",
                    self.plugin,
                    self.run_uid[:8],
                    exc,
                    RESUBSCRIBE_S,
                )
                self._subscriptions.remove(subscription)
                if self._closed.wait(RESUBSCRIBE_S):
                    return
                continue
            self._subscription = subscription
            self._subscribed.set()
            self._log_step("subscribed to its table")
            while subscription._thread.is_alive() and not self._closed.wait(CHECK_S):
                if not subscription.settled and (
                    time.monotonic() - subscription.connected_at > RESYNC_WINDOW_S
                ):
                    subscription.settled = True
                    self._resync(events)
            _disconnect(subscription)
            self._subscriptions.remove(subscription)
            if not self._closed.wait(RESUBSCRIBE_S):
                logger.warning(
                    "the subscription to %s of run %s ended; subscribing afresh",
                    self.plugin,
                    self.run_uid[:8],
                )

    def _start(self, subscription: Any) -> None:
        self._subscriptions.append(subscription)
        subscription.start_in_thread(max_size=self._max_size)

    def _read_all(self, events: Any) -> None:
        self._deliver(events.read())

    def _resync(self, events: Any) -> None:
        """Read the table again, for rows appended as the server started listening."""
        try:
            self._read_all(events)
        except Exception as exc:  # the connection's own handling covers a server gone away
            logger.debug("re-reading %s of run %s failed: %s", self.plugin, self.run_uid[:8], exc)

    def _on_rows(self, update: Any) -> None:
        rows = update.data()
        subscription = self._subscription
        if subscription is not None and not subscription.settled and self._skips_rows(rows):
            self._resync(subscription.events)
        self._deliver(rows)

    def _skips_rows(self, rows: pd.DataFrame) -> bool:
        """Whether pushed ``rows`` start past the row after the last one delivered."""
        if rows is None or len(rows) == 0:
            return False
        first = int(rows["seq_num"].min())
        return first > (self._last_seq_num or 0) + 1

    def _deliver(self, table: pd.DataFrame) -> None:
        """Pass on the rows past the last delivered ``seq_num``, in order, once each."""
        with self._deliver_lock:
            if self._closed.is_set() or table is None or len(table) == 0:
                return
            table = table.sort_values("seq_num", kind="stable")
            if self._last_seq_num is not None:
                table = table[table["seq_num"] > self._last_seq_num]
            if table.empty:
                return
            self._last_seq_num = int(table["seq_num"].iloc[-1])
            self.rows_delivered += len(table)
            try:
                self._callback(table.reset_index(drop=True))
            except Exception:
                logger.exception("the callback following %s raised; following goes on", self.plugin)


def _look_again_times() -> Iterator[float]:
    """Seconds after subscribing at which a wait for a child looks for it again: without end."""
    yield from LOOK_AGAIN_S
    yield from itertools.count(LOOK_AGAIN_S[-1] * 2, LOOK_AGAIN_S[-1])


def _lookup(container: Any, keys: tuple[str, ...]) -> Any:
    """``container[keys]`` asked of the server in one request, or None if it is not there.

    Not from the contents the server inlined when ``container`` was fetched, which
    are stale for a container that is still growing (``_ignore_inlined_contents``,
    a private argument of tiled 0.2.20's ``Container.__getitem__``, pinned).
    """
    try:
        return container.__getitem__(keys, _ignore_inlined_contents=True)
    except KeyError:
        return None


def _disconnect(subscription: Any) -> None:
    with contextlib.suppress(Exception):  # already closed, or never connected
        subscription.disconnect()


def follow(
    client: Any,
    run_uid: str,
    plugin: str,
    callback: Callable[[pd.DataFrame], Any],
    stream: str = "primary",
) -> Follower:
    """Call ``callback(rows)`` with each batch of ``plugin``'s results for a run as published.

    ``rows`` is a ``pandas.DataFrame`` of the rows new since the last call
    (``seq_num``, ``time``: the event's time, and the plugin's scalars), in
    ``seq_num`` order; every row comes exactly once, also when following
    starts mid-run (the rows so far come first) or the connection drops. The
    analysis need not exist yet. Returns at once; the callback runs on a
    thread of Tiled's client. Stop with ``.close()`` or a ``with`` block::

        with follow(client, uid, "peak_stats", print):
            RE(count([det], 100))
    """
    return Follower(client, run_uid, plugin, callback, stream)


class NodeChanges:
    """Told by Tiled whenever a child is made, or its metadata updated, under some containers.

    For a reader that waits for something to be finished in Tiled (a run's stop
    document, an analysis leaving ``running``): it looks, then :meth:`wait`s for
    the next push instead of polling. A container that cannot be subscribed to
    (not there yet) is left out; ``wait``'s timeout covers it. Close it, or use
    it in a ``with`` block.
    """

    def __init__(self, containers: list[Any]) -> None:
        self._changed = threading.Event()
        self._subscriptions: list[Any] = []
        for container in containers:
            try:
                subscription = container.subscribe()
                subscription.child_created.add_callback(self._on_change)
                subscription.child_metadata_updated.add_callback(self._on_change)
                subscription.start_in_thread()
            except Exception as exc:
                logger.debug("not subscribed to %s: %s", container, exc)
                continue
            self._subscriptions.append(subscription)

    def _on_change(self, update: Any) -> None:
        self._changed.set()

    def wait(self, timeout: float) -> bool:
        """Block until something changed since the last call (True), or ``timeout`` s pass."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def close(self) -> None:
        for subscription in self._subscriptions:
            _disconnect(subscription)

    def __enter__(self) -> NodeChanges:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
