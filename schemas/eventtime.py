"""Which event times are plausible: the contract's rule for every ``ts`` that comes from outside.

An event's ``ts`` is the storefront's clock (a prediction's event time is its ``request_ts``). Kafka stamps
every message with a timestamp too: the broker's clock on topics with ``message.timestamp.type =
LogAppendTime`` (what ``modelwatch topics create`` sets on the requests, predictions and outcomes), the
producer's on ``CreateTime`` topics. An event time is plausible when it lies within
``[broker - past, broker + future]``. Clocks drift, so some slack is normal; a ``ts`` in microseconds, in
seconds, or years away is not, and a single one must not decide anything: it is dead-lettered (requests,
outcomes) or dropped and counted (predictions), and never moves a clock.
"""

from __future__ import annotations

YEAR_MS = 365.25 * 24 * 3600 * 1000


def _span(ms: float) -> str:
    ms = abs(ms)
    if ms >= YEAR_MS:
        return f"{ms / YEAR_MS:,.0f} years"
    if ms >= 86_400_000:
        return f"{ms / 86_400_000:,.1f} days"
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:,.1f} hours"
    return f"{ms / 1000:,.1f} s"


def implausible(ts: int, broker_ms: int | None, future_ms: int, past_ms: int) -> str | None:
    """``None`` if ``ts`` is plausible for a message stamped ``broker_ms``, else the reason, naming ``ts``.

    Without a broker timestamp (``None`` or negative: the message has none) nothing can be judged.
    """
    if broker_ms is None or broker_ms <= 0:
        return None
    if broker_ms - past_ms <= ts <= broker_ms + future_ms:
        return None
    hint = ""
    if broker_ms - past_ms <= ts // 1000 <= broker_ms + future_ms:
        hint = " (microseconds? ts is milliseconds since the epoch)"
    elif broker_ms - past_ms <= ts * 1000 <= broker_ms + future_ms:
        hint = " (seconds? ts is milliseconds since the epoch)"
    if ts > broker_ms:
        off, side, limit = _span(ts - broker_ms), "after", _span(future_ms)
    else:
        off, side, limit = _span(broker_ms - ts), "before", _span(past_ms)
    return f"ts: {ts} is {off} {side} its message's broker time {broker_ms} (more than {limit}){hint}"
