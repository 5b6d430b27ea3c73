"""The join's first step: read predictions and outcomes as their producers partitioned them, check them,
and repartition them by request_id, with one known partitioner, to the internal topic the join reads.

Why. A request's prediction and outcome must meet in one place, but their producers choose partitions:
the storefront's client (librdkafka's default ``consistent_random``, Java's murmur2, anything) and the
scoring service (another language, another client). Like Kafka Streams for inputs that are not
co-partitioned, the monitor routes both through ``<prefix>monitor-joinable``, choosing each event's
partition itself (:func:`partition_of`), so the join never depends on a producer's partitioner or key.

What a :class:`Router` sends is bundled: per batch, one message per join partition, holding that
partition's events (slimmed to what the join needs, :mod:`streams.join`) and a report on every source
partition the router reads (its latest plausible event time, whether it is idle). Every join partition
hears every report, so each computes the streams' watermarks over all source partitions
(:mod:`streams.watermarks`). A report is sent after the events it accounts for, on the same partition.

Checks. A contract-invalid event is dropped (an outcome is dead-lettered with the codec's reason). An event
whose time is implausible for its message's broker timestamp (:mod:`schemas.eventtime`) never reaches the
join and moves no clock: an outcome is dead-lettered on ``<prefix>outcomes.dlq`` with the reason naming
``ts``; a prediction (the service has dead-lettered its request already, so this is another producer's)
is dropped and counted.

Models. A monitor watches one model (``model``): another model's prediction still moves its partition's
clock (event time is the storefront's, whatever the model) but goes no further; a prediction without a
``model`` field is the default model's. So does an outcome naming another model; an outcome naming none
goes to every model's join, where another model's waits for a prediction that never comes
(``prediction_wait_s``): storefronts that know the model should name it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from msgspec import UNSET

from schemas import codec
from schemas.errors import ContractError
from schemas.eventtime import implausible
from streams.join import PREDICTION, SHADOW, joinable_outcome, joinable_prediction
from streams.outcome_check import read_outcome
from streams.prediction_check import read_prediction

#: A dead letter carries at most this much of the original payload, as the service's do.
PAYLOAD_LIMIT = 64 * 1024
KEY_LIMIT = 4 * 1024


def partition_of(request_id: str, partitions: int) -> int:
    """The join partition of a request: CRC-32 of its id's UTF-8 bytes (stable across processes and
    versions, unlike Python's ``hash``)."""
    return zlib.crc32(request_id.encode()) % partitions


@dataclass
class RouterStats:
    predictions: int = 0
    outcomes: int = 0
    invalid_predictions: int = 0
    invalid_outcomes: int = 0
    implausible_predictions: int = 0
    implausible_outcomes: int = 0
    shadow: int = 0
    invalid_shadow: int = 0  # contract-invalid or implausible: dropped, counted
    other_models: int = 0  # predictions of models this monitor does not watch


@dataclass
class _Source:
    partitions: int
    seen: float  # processing time of the last message (or of the assignment)
    latest: int = -1  # the latest plausible event time seen
    read: int | None = None  # the log offset after the last message read (unknown before the first)


@dataclass
class Router:
    """Routes one worker's source partitions. Feed it messages; take its bundles once per batch."""

    partitions: int  # of the joinable topic
    future_ms: int
    past_ms: int  # how far before its broker time an outcome's ts may be
    prediction_past_ms: int  # how far before its broker time a prediction's request_ts may be
    idle_timeout_s: float
    clock: Callable[[], float] = time.monotonic  # processing time: only says whether a partition is idle
    wall: Callable[[], float] = time.time  # ...and, with every outcome partition idle, how late it is
    stats: RouterStats = field(default_factory=RouterStats)
    #: The model watched (``None``: every prediction), and the model of predictions that name none.
    model: str | None = None
    default_model: str | None = None
    #: The high watermark (the offset the next message will get) of a source partition as the consumer
    #: knows it, ``None`` if it does not. Without it (a caller that knows no log offsets, the bench's
    #: baseline) quiet alone makes a partition idle.
    highwater: Callable[[str, int], int | None] | None = None
    sources: dict[tuple[str, int], _Source] = field(default_factory=dict)
    _events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def assign(self, stream: str, partition: int, partitions: int) -> None:
        """The worker reads ``partition`` of ``stream`` (of ``partitions``) from now on."""
        if (stream, partition) not in self.sources:
            self.sources[(stream, partition)] = _Source(partitions, seen=self.clock())

    def revoke(self, stream: str, partition: int) -> None:
        self.sources.pop((stream, partition), None)

    def started(self, stream: str, partition: int, position: int) -> None:
        """The consumer's position in a partition of which nothing was read yet: it is read up to there."""
        source = self.sources.get((stream, partition))
        if source is not None and source.read is None:
            source.read = position

    def route(
        self,
        stream: str,
        partition: int,
        partitions: int,
        broker_ms: int | None,
        value: bytes | None,
        offset: int | None = None,
    ) -> tuple[str, str] | None:
        """Take one source message (at log ``offset``, if the caller knows it); ``None``, or
        ``(error, kind)`` for a message that goes no further (kind ``invalid`` or ``implausible``), the
        error naming the field."""
        if stream == SHADOW:
            return self._route_shadow(partition, broker_ms, value)
        self.assign(stream, partition, partitions)
        source = self.sources[(stream, partition)]
        source.seen = self.clock()
        if offset is not None:
            source.read = max(source.read or 0, offset + 1)
        prediction = stream == "predictions"
        try:
            joinable, named, ts_field = _read(prediction, partition, value)
        except ContractError as exc:
            if prediction:
                self.stats.invalid_predictions += 1
            else:
                self.stats.invalid_outcomes += 1
            return str(exc), "invalid"
        past = self.prediction_past_ms if prediction else self.past_ms
        problem = implausible(joinable["ts"], broker_ms, self.future_ms, past)
        if problem is not None:
            if prediction:
                self.stats.implausible_predictions += 1
                return f"prediction: {problem.replace('ts:', ts_field + ':', 1)}", "implausible"
            self.stats.implausible_outcomes += 1
            return f"outcome: {problem}", "implausible"
        source.latest = max(source.latest, joinable["ts"])
        if self.model is not None and not self._watched(named, prediction):
            self.stats.other_models += 1
            return None
        if prediction:
            self.stats.predictions += 1
        else:
            self.stats.outcomes += 1
        self._events.setdefault(partition_of(joinable["request_id"], self.partitions), []).append(joinable)
        return None

    def _route_shadow(
        self, partition: int, broker_ms: int | None, value: bytes | None
    ) -> tuple[str, str] | None:
        """A shadow prediction goes to its request's join partition like the request's prediction. Its
        source partitions are no stream of their own: they hold no watermark back and move none (the
        shadow thread may lag, or a shadow end, without any clock waiting for it)."""
        try:
            joinable, named, _ = _read(True, partition, value, SHADOW)
        except ContractError as exc:
            self.stats.invalid_shadow += 1
            return f"shadow {exc}", "invalid"
        problem = implausible(joinable["ts"], broker_ms, self.future_ms, self.prediction_past_ms)
        if problem is not None:
            self.stats.invalid_shadow += 1
            return f"shadow prediction: {problem}", "implausible"
        if self.model is not None and not self._watched(named, prediction=True):
            self.stats.other_models += 1
            return None
        self.stats.shadow += 1
        self._events.setdefault(partition_of(joinable["request_id"], self.partitions), []).append(joinable)
        return None

    def _watched(self, named: Any, prediction: bool) -> bool:
        """Whether an event naming model ``named`` is the watched model's: a prediction naming none is the
        default model's; an outcome naming none could be anyone's (the storefront need not know), so every
        monitor takes it."""
        if not isinstance(named, str):
            return not prediction or (self.default_model or self.model) == self.model
        return named == self.model

    def reports(self) -> list[dict[str, Any]]:
        """The state of every source partition this worker reads."""
        now, wall_ms = self.clock(), int(self.wall() * 1000)
        return [
            {
                "now": wall_ms,
                "stream": stream,
                "partition": partition,
                "partitions": s.partitions,
                "latest": s.latest,
                "idle": self._idle(stream, partition, s, now),
            }
            for (stream, partition), s in sorted(self.sources.items())
        ]

    def _idle(self, stream: str, partition: int, source: _Source, now: float) -> bool:
        """Quiet for the idle timeout *and* read to its end. Quiet alone is not caught up: a slow consumer,
        a loaded machine or a stalled fetch leaves a partition quiet with unread messages, and a watermark
        passing them would expire predictions whose outcomes are still to be read. The log offset decides,
        not the clock: idle only if the offset read is at the high watermark the consumer knows.
        A high watermark or a read offset the router does not know is not caught up: the consumer learns
        the high watermark from every fetch response (empty ones too, within ``fetch_max_wait``), so it is
        unknown only while that partition's fetches do not come back, which is exactly the stall to guard
        against; waiting costs the watermark some time, a wrong idle costs labels that cannot come back."""
        if now - source.seen <= self.idle_timeout_s:
            return False
        if self.highwater is None:
            return True
        end = self.highwater(stream, partition)
        return end is not None and source.read is not None and source.read >= end

    def take(self) -> list[dict[str, Any]]:
        """The events routed since the last call, every destination's (for a caller that joins in one
        place, as the plain baseline does)."""
        events = [e for destination in sorted(self._events) for e in self._events[destination]]
        self._events.clear()
        return events

    def bundles(self) -> list[tuple[int, bytes]]:
        """One message per join partition: its events since the last call, then the reports."""
        reports = self.reports()
        out = []
        for destination in range(self.partitions):
            events = self._events.pop(destination, [])
            out.append((destination, orjson.dumps({"events": events, "sources": reports})))
        self._events.clear()
        return out


def _read(
    prediction: bool, partition: int, value: bytes | None, kind: str = PREDICTION
) -> tuple[dict[str, Any], Any, str]:
    """A source message as the join needs it, the model it names and the field its event time came from;
    :class:`ContractError` if it breaks the contract. Each is read by its fast path when that can vouch
    for it (:mod:`streams.prediction_check`, :mod:`streams.outcome_check`), otherwise by the codec."""
    if prediction:
        fast = read_prediction(value)
        if fast is not None:
            return (
                fast.joinable(partition, kind),
                fast.model,
                "ts" if fast.request_ts is UNSET else "request_ts",
            )
        event = codec("prediction").decode(value)
        ts_field = "request_ts" if "request_ts" in event else "ts"
        return joinable_prediction(event, partition, kind), event.get("model"), ts_field
    outcome = read_outcome(value)
    if outcome is not None:
        return outcome.joinable(partition), outcome.model, "ts"
    event = codec("outcome").decode(value)
    return joinable_outcome(event, partition), event.get("model"), "ts"


def decode_bundle(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, reports) of one message of the joinable topic."""
    bundle = orjson.loads(data)
    return bundle["events"], bundle["sources"]


def dead_letter(
    error: str, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
) -> tuple[bytes | None, bytes]:
    """A dead-letter event for a source message, in the form of ``rec.requests.dlq``'s, keyed like it."""
    raw = value or b""
    event: dict[str, Any] = {
        "error": error,
        "payload": raw[:PAYLOAD_LIMIT].decode("utf-8", "replace"),
        "source_topic": topic,
        "partition": partition,
        "offset": max(offset, 0),
        "ts": int(time.time() * 1000),
    }
    if len(raw) > PAYLOAD_LIMIT:
        event["payload_bytes"] = len(raw)
        event["payload_truncated"] = True
    if key is not None and len(key) > KEY_LIMIT:
        key = key[:KEY_LIMIT]
    return key, codec("dead-letter").encode(event)
