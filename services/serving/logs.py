"""Structured logs: one line per event, ``key=value`` pairs that both people and ``grep``/``awk`` read.

    2026-01-05T10:00:00.123Z level=info component=serve instance=serve-1 event=activated version=v2 ...

Events go through the standard :mod:`logging` tree under ``modelwatch`` so an application embedding the
service can route them; :func:`configure` installs the line format on stderr (the CLI calls it).

librdkafka's own log lines and error callbacks are routed here too, throttled per kind: a broker that is
down would otherwise print a line per reconnect attempt, several times a second.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

from confluent_kafka import KafkaError

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@#+,[]")


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
    if text and all(c in _BARE for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def line(fields: dict[str, Any]) -> str:
    """``key=value`` pairs, quoted where needed; ``None`` values are left out."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)


class KeyValueFormatter(logging.Formatter):
    """Renders a record as a timestamp, its level, then its ``fields`` (see :class:`EventLog`)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {"level": record.levelname.lower()}
        extra = getattr(record, "fields", None)
        if extra is None:
            fields["logger"] = record.name
            fields["message"] = record.getMessage()
        else:
            fields.update(extra)
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return f"{ts}.{int(record.msecs):03d}Z {line(fields)}"


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Print modelwatch's events on ``stream`` (stderr) in the line format; idempotent."""
    root = logging.getLogger("modelwatch")
    for handler in root.handlers:
        if getattr(handler, "_modelwatch", False):
            return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler._modelwatch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class EventLog:
    """Named events with fields, bound to a component and an instance.

    >>> log = EventLog("serve", instance="serve-1")
    >>> log.info("started", mode="at-least-once")  # ... level=info component=serve instance=serve-1 ...
    """

    def __init__(self, component: str, **bound: Any) -> None:
        self.logger = logging.getLogger(f"modelwatch.{component}")
        self.bound: dict[str, Any] = {"component": component, **bound}

    def bind(self, **more: Any) -> EventLog:
        other = EventLog.__new__(EventLog)
        other.logger, other.bound = self.logger, {**self.bound, **more}
        return other

    def log(self, level: int, event: str, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={"fields": {**self.bound, "event": event, **fields}})

    def debug(self, event: str, **fields: Any) -> None:
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log(logging.ERROR, event, **fields)


class Throttle:
    """Lets the first occurrence of each kind through, then at most one per ``every_s`` seconds, telling
    how many were held back in between."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str) -> int | None:
        """``None`` to hold this occurrence back, else how many were held back before it."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.every_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._held.pop(kind, 0)


class _KafkaLogHandler(logging.Handler):
    """Receives librdkafka's log lines (``logger`` client setting) and re-emits them as throttled events."""

    def __init__(self, log: EventLog, throttle: Throttle) -> None:
        super().__init__()
        self.log, self.throttle = log, throttle

    def emit(self, record: logging.LogRecord) -> None:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, message).
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            facility, client, message = (str(a) for a in args[:3])
        else:
            facility, client, message = "LOG", "", record.getMessage()
        held = self.throttle.admit(f"log:{facility}")
        if held is not None:
            self.log.log(
                record.levelno,
                "kafka_log",
                facility=facility,
                kafka_client=client,
                message=message,
                suppressed=held or None,
            )


class KafkaReporter:
    """What a Kafka client says, as throttled events: pass :meth:`client_settings` to every client."""

    def __init__(self, log: EventLog, every_s: float = 30.0) -> None:
        self.log = log.bind(source="librdkafka")
        self.throttle = Throttle(every_s)
        self.logger = logging.getLogger(f"modelwatch.kafka.{id(self):x}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(_KafkaLogHandler(self.log, self.throttle))

    def on_error(self, error: KafkaError) -> None:
        held = self.throttle.admit(f"error:{error.code()}")
        if held is not None:
            level = logging.ERROR if error.fatal() else logging.WARNING
            self.log.log(
                level, "kafka_error", code=error.name(), message=error.str(), suppressed=held or None
            )

    def client_settings(self) -> dict[str, Any]:
        return {
            "logger": self.logger,  # librdkafka's lines go through our throttled, structured log
            "log_level": 4,  # warnings and worse: connection chatter stays out of the service's log
            "error_cb": self.on_error,
        }
