"""One plugin's calls on a thread of their own, in order, watched.

The worker gives each plugin of a run a :class:`Lane`: a thread and a bounded
queue of calls. A plugin that is slow only delays its own lane (the worker
skips, and records, what does not fit in the queue), one that hangs is found
by the worker's watchdog (:attr:`Lane.busy_for`) and abandoned, and one whose
calls keep the process' memory growing is reported by :attr:`Lane.growth`.
Calls of one plugin never overlap, so stateful plugins see their events in
order, on one thread for the whole run.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_frames() -> dict[int, Any]:
    """``sys._current_frames()``, with the garbage collector held off while it runs.

    CPython 3.11 builds that dict while holding the interpreter's thread-list
    lock; an allocation there may start a collection whose finalizers need that
    lock again (a ``threading.local`` being cleared, say), and the thread deadlocks
    (CPython gh-106883, fixed in 3.11.9; the machines here run 3.11.7). Seen here: the
    watchdog asking where a hung plugin was stuck never returned, and nor did the test.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def format_frames(frames: traceback.StackSummary) -> str:
    """Frames as one line, ``file:line in function`` each, innermost last."""
    return " | ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in frames)


class _MemoryLedger:
    """Measures what each plugin call leaves in the process' memory, where that is exact.

    Resident memory is one figure for the whole process, so a call's growth
    is known only for calls that ran alone: no other lane's call started or
    ended while it ran. Those are measured (and charged to their lane); calls
    that overlapped are not. A plugin that keeps what it allocates shows it
    in its lone calls, which on a beamline, between bursts of events, are most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0
        self._generation = 0

    def begin(self) -> tuple[int, int]:
        with self._lock:
            self._busy += 1
            self._generation += 1
            return self._generation, rss_bytes()

    def end(self, started: tuple[int, int]) -> int | None:
        """The call's growth in bytes if it ran alone, else None."""
        with self._lock:
            alone = self._generation == started[0] and self._busy == 1
            self._busy -= 1
            self._generation += 1
            return rss_bytes() - started[1] if alone else None

    def forget(self) -> None:
        """A call that will not end (abandoned): stop counting it as running."""
        with self._lock:
            self._busy -= 1
            self._generation += 1


def rss_bytes() -> int:
    """This process' resident memory now (0 where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


_LEDGER = _MemoryLedger()


class Lane:
    """A thread that runs one plugin's calls for one run, in order.

    ``capacity`` bounds the calls waiting. :meth:`submit` never blocks;
    :meth:`abandon` lets a hung call be (its thread is a daemon, and runs
    nothing more once the call returns).
    """

    def __init__(self, name: str, capacity: int = 64) -> None:
        self.name = name
        self._tasks: queue.Queue = queue.Queue(maxsize=capacity)
        self._idle = threading.Condition()
        self._pending = 0
        self.abandoned = False
        self.current = ""
        self.current_stream = ""
        self.current_seq_num = -1
        self._busy_since: float | None = None
        #: Growth of the process' memory over this lane's calls that ran alone (bytes).
        self.growth = 0
        self.calls = 0
        self.measured_calls = 0
        self._measuring: tuple[int, int] | None = None
        self._abandon_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"smartlab-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        call: Callable[[], None],
        what: str,
        stream: str = "",
        seq_num: int = -1,
        wait: float = 0.0,
    ) -> bool:
        """Queue ``call`` (``what`` it does, on which event); False if the queue stayed
        full for ``wait`` seconds, or the lane was abandoned."""
        if self.abandoned:
            return False
        with self._idle:
            self._pending += 1
        try:
            self._tasks.put((call, what, stream, seq_num), block=wait > 0, timeout=wait or None)
        except queue.Full:
            with self._idle:
                self._pending -= 1
            return False
        return True

    @property
    def waiting(self) -> int:
        """Calls queued or in progress."""
        return self._pending

    @property
    def busy_for(self) -> float:
        """Seconds the call in progress has taken so far (0 when idle)."""
        since = self._busy_since
        return time.monotonic() - since if since is not None else 0.0

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until every queued call has returned; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending and not self.abandoned:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stack(self, limit: int = 4) -> str:
        """Where the lane's thread is now, innermost frames last (for a hung call)."""
        frame = current_frames().get(self._thread.ident)
        if frame is None:
            return ""
        return format_frames(traceback.extract_stack(frame)[-limit:])

    def abandon(self) -> None:
        """Give up on this lane: queued calls are dropped, the thread ends when it can."""
        self.abandoned = True
        with self._abandon_lock:
            if self._measuring is not None:
                self._measuring = None
                _LEDGER.forget()
        with self._idle:
            self._idle.notify_all()
        self.stop()

    def stop(self) -> None:
        """End the thread after the calls queued so far."""
        with contextlib.suppress(queue.Full):  # full and abandoned: the thread sees ``abandoned``
            self._tasks.put_nowait(None)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None or self.abandoned:
                return
            call, self.current, self.current_stream, self.current_seq_num = task
            self._busy_since = time.monotonic()
            self._measuring = _LEDGER.begin()
            try:
                call()
            except Exception:  # the worker's calls record their own failures
                logger.exception("plugin %s: unexpected error in its lane", self.name)
            finally:
                self._busy_since = None
                with self._abandon_lock:
                    measuring, self._measuring = self._measuring, None
                if measuring is not None:
                    grown = _LEDGER.end(measuring)
                    if grown is not None:
                        self.growth += grown
                        self.measured_calls += 1
                self.calls += 1
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
