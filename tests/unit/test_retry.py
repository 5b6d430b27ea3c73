"""The one retry helper: backoff schedule, reports, stop, wake, deadlines."""

from __future__ import annotations

import threading

import pytest

from services.kafka.retry import NotYet, backoff_s, retry


class Flaky(Exception):
    pass


def failing(times: int, error: type[Exception] = Flaky) -> tuple[list[int], object]:
    calls: list[int] = []

    def attempt(n: int) -> str:
        calls.append(n)
        if n <= times:
            raise error(f"not yet ({n})")
        return "done"

    return calls, attempt


def test_backoff_doubles_from_the_first_wait_up_to_the_cap_and_is_reported_before_each_wait() -> None:
    assert [backoff_s(n, 10.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    calls, attempt = failing(4)
    told: list[tuple[int, float, str]] = []
    result = retry(
        attempt,  # type: ignore[arg-type]
        retry_on=(Flaky,),
        first_s=0.001,
        retry_max_s=0.004,
        on_retry=lambda n, wait, err: told.append((n, wait, str(err))),
    )
    assert result == "done" and calls == [1, 2, 3, 4, 5]
    assert [(n, wait) for n, wait, _ in told] == [(1, 0.001), (2, 0.002), (3, 0.004), (4, 0.004)]
    assert told[0][2] == "not yet (1)"


def test_other_errors_are_raised_at_once_and_not_yet_is_always_retried() -> None:
    calls, attempt = failing(1, ValueError)
    with pytest.raises(ValueError):
        retry(attempt, retry_on=(Flaky,), first_s=0.001)  # type: ignore[arg-type]
    assert calls == [1]
    calls, attempt = failing(2, NotYet)
    assert retry(attempt, retry_on=(), first_s=0.001) == "done"  # type: ignore[arg-type]


def test_stop_ends_the_waiting_without_another_attempt_and_wake_only_cuts_waits_short() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def attempt(n: int) -> None:
        calls.append(n)
        stop.set()  # asked to stop while failing: the long wait ends at once, no second attempt
        raise Flaky

    assert retry(attempt, retry_on=(Flaky,), first_s=60.0, retry_max_s=60.0, stop=stop) is None
    assert calls == [1]
    assert retry(lambda n: n, retry_on=(), stop=stop) is None  # set before: not even one attempt

    woken = threading.Event()
    woken.set()
    calls2, attempt2 = failing(2)
    assert retry(attempt2, retry_on=(Flaky,), first_s=60.0, wake=woken) == "done"  # type: ignore[arg-type]
    assert calls2 == [1, 2, 3]


def test_within_a_deadline_the_last_error_is_raised() -> None:
    calls, attempt = failing(10**9)
    with pytest.raises(Flaky):
        retry(attempt, retry_on=(Flaky,), within_s=0.2, every_s=0.05)  # type: ignore[arg-type]
    assert 2 <= len(calls) <= 6
