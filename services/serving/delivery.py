"""Delivery: when a consumed request counts as answered, in the two modes the service runs in.

**At-least-once** (the default). Predictions go through an idempotent producer with ``acks=all``. Each
polled batch is a :class:`_Batch` whose delivery callbacks count its outstanding messages. Offsets are
*stored* only for batches whose every output the broker acknowledged, and only in poll order (a later
batch never overtakes an earlier one still in flight, since outputs go to other partitions than their
requests came from); librdkafka commits stored offsets in the background every ``commit_interval_ms``,
on rebalance and on close. A failed delivery replays everything in flight from its first offset: a
request may be answered twice, never zero times.

**Exactly-once** (``--exactly-once``): :mod:`services.serving.transactions`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from schemas.errors import ServingError
from services.serving.logs import EventLog
from services.serving.metrics import ServeMetrics

DeliveryCallback = Callable[[KafkaError | None, Message], None]


def positions_of(messages: Sequence[Message]) -> tuple[dict[int, int], dict[int, int]]:
    """First offset and next offset (last + 1) per partition of a batch."""
    first: dict[int, int] = {}
    after: dict[int, int] = {}
    for msg in messages:
        offset, partition = msg.offset(), msg.partition()
        if offset is None or partition is None or offset < 0:  # an error event, not a message
            continue
        if partition not in first:
            first[partition] = offset
        after[partition] = offset + 1
    return first, after


class Delivery:
    """What the poll loop asks of a delivery mode."""

    producer: Producer

    def begin(self) -> DeliveryCallback | None:
        """Start a batch; returns the callback to produce its outputs with."""
        raise NotImplementedError

    def end(self, messages: Sequence[Message], produced: int) -> None:
        """The batch's outputs (``produced`` of them) are all handed to the producer."""
        raise NotImplementedError

    def tick(self) -> None:
        """Once per loop turn: serve delivery reports, commit what is due."""
        raise NotImplementedError

    def failed(self, error: KafkaError) -> None:
        """The producer refused an output of the current batch: it must be redone."""
        raise NotImplementedError

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        pass

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish: everything produced is acknowledged and its offsets committed, or nothing is."""
        raise NotImplementedError


class _Batch:
    __slots__ = ("after", "error", "first", "pending", "sealed")

    def __init__(self) -> None:
        self.pending = 0
        self.sealed = False
        self.error: KafkaError | None = None
        self.first: dict[int, int] = {}
        self.after: dict[int, int] = {}

    def delivered(self, err: KafkaError | None, _msg: Message) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = err


class AtLeastOnce(Delivery):
    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        topic: str,
        log: EventLog,
        metrics: ServeMetrics,
        stop: threading.Event,
        retry_max_s: float = 10.0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.consumer, self.producer, self.topic = consumer, producer, topic
        self.log, self.metrics, self.stop = log, metrics, stop
        self.retry_max_s, self.flush_timeout_s = retry_max_s, flush_timeout_s
        self.backoff_s = 0.0
        self.in_flight: deque[_Batch] = deque()
        self._current: _Batch | None = None

    def begin(self) -> DeliveryCallback:
        self._current = _Batch()
        return self._current.delivered

    def end(self, messages: Sequence[Message], produced: int) -> None:
        batch = self._current
        assert batch is not None, "end() without begin()"
        batch.first, batch.after = positions_of(messages)
        batch.pending += produced  # callbacks already served made it negative; this settles it
        batch.sealed = True
        if batch.after:
            self.in_flight.append(batch)
        self._current = None

    def tick(self) -> None:
        self.producer.poll(0)
        self._store_confirmed()

    def failed(self, error: KafkaError) -> None:
        if error.fatal():
            raise ServingError(f"the producer failed fatally: {error.str()}")
        if self._current is not None and self._current.error is None:
            self._current.error = error  # replayed, with everything after it, once it reaches the front

    def _store_confirmed(self) -> None:
        done: dict[int, int] = {}
        while self.in_flight and self.in_flight[0].pending <= 0:
            batch = self.in_flight[0]
            if batch.error is not None:
                self._replay(batch.error)
                return
            self.in_flight.popleft()
            done.update(batch.after)
            self.backoff_s = 0.0
        if done:
            try:
                self.consumer.store_offsets(
                    offsets=[TopicPartition(self.topic, p, o) for p, o in done.items()]
                )
            except KafkaException as exc:
                # A partition revoked in between: its new owner replays from the last commit.
                self.log.warning("store_offsets_failed", error=exc.args[0].str())

    def _replay(self, error: KafkaError) -> None:
        """Seek every partition back to its first unconfirmed offset: those requests are served again."""
        if error.fatal():
            raise ServingError(f"the producer failed fatally: {error.str()}")
        rewind: dict[int, int] = {}
        for batch in self.in_flight:
            for p, o in batch.first.items():
                rewind[p] = min(o, rewind.get(p, o))
        self.in_flight.clear()
        self.metrics.rewinds.inc()
        # A failure that persists (a topic's ACL, a lost broker) must not become a hot replay loop.
        self.backoff_s = min(max(2 * self.backoff_s, 0.1), self.retry_max_s)
        self.log.error(
            "delivery_failed",
            error=error.str(),
            replay_from=",".join(f"{p}:{o}" for p, o in sorted(rewind.items())),
            retry_in_s=self.backoff_s,
        )
        for p, o in rewind.items():
            try:
                self.consumer.seek(TopicPartition(self.topic, p, o))
            except KafkaException as exc:
                self.log.warning("seek_failed", partition=p, error=exc.args[0].str())
        self.stop.wait(self.backoff_s)

    def _drain(self) -> None:
        """Wait for every delivery report, then store what was confirmed."""
        remaining = self.producer.flush(self.flush_timeout_s)
        self._store_confirmed()
        if remaining:
            self.log.error("flush_timed_out", unconfirmed=remaining)
        self.in_flight.clear()

    def _commit_now(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit
                self.log.warning("commit_failed", error=exc.args[0].str())

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Before the partitions go: everything answered so far is committed, so the next owner
        # starts exactly after it.
        self._drain()
        self._commit_now()

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group already gave them away: committing now would fail; the new owner replays.
        self.producer.flush(self.flush_timeout_s)
        self.in_flight.clear()

    def close(self) -> None:
        self._drain()
        self._commit_now()
