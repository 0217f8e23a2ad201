"""One retry policy for every request SmartLab makes to Tiled."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed later: Tiled away, restarting or overloaded."""
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409


@dataclass
class Backoff:
    """When to try a failed request to Tiled again: exponential backoff, capped.

    A transient failure (Tiled away, restarting, overloaded) is retried after
    ``initial`` seconds, doubling up to ``maximum``, for as long as it lasts;
    a 5xx answer at most ``server_error_attempts`` times, since a server that
    answers but fails may fail for good. Anything else is not retried.
    """

    initial: float = 0.5
    maximum: float = 10.0
    server_error_attempts: int = 5
    attempts: int = 0
    delay: float = field(init=False)

    def __post_init__(self) -> None:
        self.delay = self.initial

    def next_delay(self, exc: BaseException) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give the request up."""
        self.attempts += 1
        server_error = isinstance(exc, httpx.HTTPStatusError)
        if not is_transient(exc) or (server_error and self.attempts > self.server_error_attempts):
            self.succeeded()  # given up: the next request starts afresh
            return None
        delay, self.delay = self.delay, min(self.delay * 2, self.maximum)
        return delay

    def succeeded(self) -> None:
        """A request went through: the next failure starts from ``initial`` again."""
        self.attempts, self.delay = 0, self.initial
