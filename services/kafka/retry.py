"""One way to wait for Kafka: retry a call with exponential backoff, saying so before each wait.

Every process that needs the cluster, a topic or a transaction to be there retries the same way (tenacity
underneath): the first wait is ``first_s`` (0.5 s), each next one doubles, up to ``retry_max_s``; the
caller's ``on_retry(attempt, wait_s, error)`` reports each failure (a log line) before the wait; a ``stop``
event ends the waiting at once, and then :func:`retry` returns ``None`` without another attempt. Errors
that are not of the retried types are raised at once. With ``within_s``, the last error is raised once that
long has passed (a tool's deadline rather than a service's patience); ``every_s`` waits a fixed time
between attempts instead of backing off (a short wait for a condition known to come soon).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_fixed,
)

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a retried call for a condition not met yet (no brokers in the metadata, no partitions)."""


class _Stopped(Exception):
    """The stop event was set: no further attempt."""


def backoff_s(attempt: int, retry_max_s: float, first_s: float = 0.5) -> float:
    """The wait after failed attempt number ``attempt`` (1, 2, ...): what :func:`retry` waits."""
    return float(wait_exponential(multiplier=first_s, max=retry_max_s)(_State(attempt)))  # type: ignore[arg-type]


class _State:
    """The one field of tenacity's RetryCallState that its exponential wait reads."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def retry(
    attempt: Callable[[int], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    retry_max_s: float = 10.0,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    stop: threading.Event | None = None,
    wake: threading.Event | None = None,
    first_s: float = 0.5,
    within_s: float | None = None,
    every_s: float | None = None,
) -> T | None:
    """``attempt(n)``'s result (``n``: 1, 2, ...), calling it again after each ``retry_on`` error (and
    :class:`NotYet`) with exponential backoff; ``None`` if ``stop`` is set first (checked before each
    attempt). ``wake`` only cuts the waits short, and the attempts go on (a call that must succeed or fail,
    not be skipped, once asked to stop)."""
    number = 0

    def guarded() -> T:
        nonlocal number
        if stop is not None and stop.is_set():
            raise _Stopped
        number += 1
        return attempt(number)

    def pause(seconds: float) -> None:
        # Interruptible: a stop event set during the wait ends it (the next attempt then sees it).
        (stop or wake or threading.Event()).wait(seconds)

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        error = state.outcome.exception()
        assert error is not None
        if on_retry is not None:
            on_retry(state.attempt_number, state.next_action.sleep, error)

    retrying = Retrying(
        retry=retry_if_exception_type((NotYet, *retry_on)),
        wait=wait_fixed(every_s)
        if every_s is not None
        else wait_exponential(multiplier=first_s, max=retry_max_s),
        stop=stop_after_delay(within_s) if within_s is not None else stop_never,
        sleep=pause,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(guarded)
    except _Stopped:
        return None
