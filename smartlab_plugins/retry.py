"""One retry policy for every network call SmartLab makes: ``Backoff``.

Tiled (results and the raw run), the broker (Redis), the queueserver and the
resume reads of a broker worker all wait the same way after a failure:
``initial`` seconds, times ``factor`` each time, at most ``maximum``. Which
failures are worth waiting for is the caller's ``transient`` predicate
(default: Tiled away, restarting or overloaded). The waiting itself stays with
the caller, because SmartLab's threads must wake at once for new work or a
``close()`` while they wait: ``Backoff`` only says how long.

tiled's client retries each request itself first (stamina: 10 attempts within
45 s, ``TILED_RETRY_ATTEMPTS``, ``TILED_RETRY_TIMEOUT``), so a Tiled outage
reaches this policy up to 45 s late; it then retries for as long as the outage
lasts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed later: Tiled away, restarting or overloaded."""
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def is_conflict(exc: BaseException) -> bool:
    """Whether Tiled answered 409: the node exists already."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409


@dataclass
class Backoff:
    """When to try a failed call again: exponential backoff, capped, perhaps bounded.

    A failure ``transient`` says may pass (by default: Tiled away, restarting,
    overloaded) is retried after ``initial`` seconds, times ``factor`` up to
    ``maximum``, for as long as it lasts, or until ``give_up_after`` seconds of
    failures; an HTTP 5xx answer at most ``server_error_attempts`` times, since
    a server that answers but fails may fail for good. Anything else is not
    retried. :meth:`succeeded` starts the next failure afresh.
    """

    initial: float = 0.5
    maximum: float = 10.0
    server_error_attempts: int = 5
    factor: float = 2.0
    give_up_after: float | None = None
    transient: Callable[[BaseException], bool] = is_transient
    attempts: int = 0
    delay: float = field(init=False)
    failing_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.delay = self.initial

    def next_delay(self, exc: BaseException) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give the call up."""
        self.attempts += 1
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        server_error = isinstance(exc, httpx.HTTPStatusError)
        out_of_time = (
            self.give_up_after is not None
            and now - self.failing_since + self.delay > self.give_up_after
        )
        if (
            not self.transient(exc)
            or (server_error and self.attempts > self.server_error_attempts)
            or out_of_time
        ):
            self.succeeded()  # given up: the next call starts afresh
            return None
        delay, self.delay = self.delay, min(self.delay * self.factor, self.maximum)
        return delay

    def failing_for(self) -> float:
        """Seconds since the first failure of the current run of failures (0 if none)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def succeeded(self) -> None:
        """A call went through: the next failure starts from ``initial`` again."""
        self.attempts, self.delay, self.failing_since = 0, self.initial, None
