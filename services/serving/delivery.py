"""Delivery: when a consumed request counts as answered, in the two modes the service runs in.

**At-least-once** (the default). Predictions go through an idempotent producer with ``acks=all``. Each
polled batch is a :class:`_Batch` whose delivery callbacks count its outstanding messages. Offsets are
*stored* only for batches whose every output the broker acknowledged, and only in poll order (a later
batch never overtakes an earlier one still in flight, since outputs go to other partitions than their
requests came from); librdkafka commits stored offsets in the background every ``commit_interval_ms``,
on rebalance and on close. A failed delivery replays everything in flight from its first offset: a
request may be answered twice, never zero times.

**Exactly-once** (``--exactly-once``). Consume-transform-produce in Kafka transactions: predictions,
dead letters and the consumer's positions (``send_offsets_to_transaction`` with the group metadata) commit
atomically. One transaction gathers batches for ``transaction_ms`` to spread the commit's cost. An
abortable error aborts and rewinds the consumer to the last committed offsets. A fenced or otherwise
fatally failed producer is replaced by a new one with the same transactional id and the work since the last
commit is redone: the usual cause is a transaction that outlived ``transaction.timeout.ms`` while a broker
failed over, which the coordinator aborts by bumping the epoch. Fenced more than
``FENCINGS_PER_MINUTE`` times in a minute, the replica gives up: another one runs with its instance id.
Readers of the output use ``isolation.level=read_committed``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from schemas.errors import ServingError
from services.kafka.retry import retry
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


class _Stuck(Exception):
    """A transactional call outlived its timeout by far: librdkafka can block past it when the group
    coordinator vanishes (confluentinc/librdkafka#5456, #5511)."""


#: More fatal producer errors than this within a minute end the replica (a duplicate instance id).
FENCINGS_PER_MINUTE = 3


class ExactlyOnce(Delivery):
    def __init__(
        self,
        consumer: Consumer,
        make_producer: Callable[[], Producer],
        log: EventLog,
        metrics: ServeMetrics,
        transaction_ms: int,
        stop: threading.Event,
        timeout_s: float = 15.0,  # per transactional call; a hung one is given up at timeout + 15 s
        retry_max_s: float = 10.0,
    ) -> None:
        self.consumer, self.make_producer, self.log, self.metrics = consumer, make_producer, log, metrics
        self.producer = make_producer()
        self.transaction_s = transaction_ms / 1000.0
        self.stop, self.timeout_s, self.retry_max_s = stop, timeout_s, retry_max_s
        self.in_transaction = False
        self.started = 0.0
        #: Producers given up on while a call hung in them; kept so they are not destroyed under it.
        self.abandoned: list[Producer] = []
        self._fatal_at: list[float] = []

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a helper thread, given up (:class:`_Stuck`) well after its own timeout."""
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["result"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=call, name=f"txn-{fn.__name__}", daemon=True)
        worker.start()
        worker.join(self.timeout_s + 15.0)
        if worker.is_alive():
            raise _Stuck(f"{fn.__name__} did not return within {self.timeout_s + 15.0:.0f}s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def init(self) -> None:
        """Register the transactional id (fencing any previous holder, which aborts its open transaction),
        retrying while the broker is away."""

        def register(_attempt: int) -> None:
            try:
                self._guarded(self.producer.init_transactions, self.timeout_s)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or not err.retriable() or self.stop.is_set():
                    raise ServingError(f"cannot start transactions: {err.str()}") from exc
                raise
            except _Stuck as exc:
                if self.stop.is_set():
                    raise ServingError(f"cannot start transactions: {exc}") from exc
                raise

        def again(_attempt: int, wait_s: float, error: BaseException) -> None:
            if isinstance(error, _Stuck):
                self._abandon(str(error))
            else:
                self.log.warning("init_transactions_retry", error=error.args[0].str(), retry_in_s=wait_s)

        # Not ended by stop (it must succeed or fail), but its waits are cut short by it.
        retry(
            register,
            retry_on=(KafkaException, _Stuck),
            retry_max_s=self.retry_max_s,
            on_retry=again,
            wake=self.stop,
        )

    def _abandon(self, why: str) -> None:
        """Give up the current producer for a new one with the same transactional id."""
        self.log.error("producer_renewed", reason=why)
        self.abandoned.append(self.producer)
        self.producer = self.make_producer()
        self.in_transaction = False
        self.metrics.rewinds.inc()

    def _renew(self, why: str) -> None:
        """A new producer, registered: its init_transactions fences the old one and aborts its work."""
        self._abandon(why)
        self.init()

    def _replace_fatal(self, what: str, error: KafkaError) -> None:
        """This producer is finished (fenced, or a fatal idempotence error): carry on with a new one. The
        coordinator fences a producer whose transaction outlived transaction.timeout.ms (a broker failover
        longer than that), and nothing of that transaction was committed. A real zombie stays fenced: the
        consumer group's generation goes with the offsets of every commit. Fenced again and again, though,
        another live replica shares this instance id, and the two would fence each other forever."""
        now = time.monotonic()
        self._fatal_at = [t for t in self._fatal_at if now - t < 60.0] + [now]
        if len(self._fatal_at) > FENCINGS_PER_MINUTE:
            raise ServingError(
                f"{what}: {error.str()} ({len(self._fatal_at)} times within a minute: does another replica "
                "run with this instance id?)"
            )
        self._renew(f"{what}: {error.str()}")

    def begin(self) -> None:
        if not self.in_transaction:
            try:
                self.producer.begin_transaction()
            except KafkaException as exc:
                if exc.args[0].fatal():
                    self._replace_fatal("begin_transaction failed", exc.args[0])
                else:
                    self._renew(f"begin_transaction failed: {exc.args[0].str()}")
                self._rewind()
                self.producer.begin_transaction()
            self.in_transaction = True
            self.started = time.monotonic()
        return None

    def end(self, messages: Sequence[Message], produced: int) -> None:
        pass

    def failed(self, error: KafkaError) -> None:
        if error.fatal():
            self._replace_fatal("the transactional producer failed fatally", error)
            self._rewind()
            return
        self.log.warning("transaction_aborted", error=error.str())
        self.abort(rewind=True)

    def tick(self) -> None:
        self.producer.poll(0)
        if self.in_transaction and time.monotonic() - self.started >= self.transaction_s:
            self.commit()

    def commit(self, rewind_on_abort: bool = True) -> bool:
        """Commit the open transaction with the consumer's positions; on an abortable error (or retriable
        ones past the timeout), abort and rewind. Returns whether it committed."""
        if not self.in_transaction:
            return True
        sent = False
        deadline = time.monotonic() + 2 * self.timeout_s
        while True:
            try:
                if not sent:
                    assignment = self.consumer.assignment()
                    positions = self.consumer.position(assignment) if assignment else []
                    if positions:
                        self._guarded(
                            self.producer.send_offsets_to_transaction,
                            positions,
                            self.consumer.consumer_group_metadata(),
                            self.timeout_s,
                        )
                    sent = True
                self._guarded(self.producer.commit_transaction, self.timeout_s)
                self.in_transaction = False
                return True
            except _Stuck as exc:
                # Nothing of it was committed: a new producer aborts it, and the work is redone.
                self._renew(str(exc))
                if rewind_on_abort:
                    self._rewind()
                return False
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal():
                    self._replace_fatal("transaction failed", err)
                    if rewind_on_abort:
                        self._rewind()
                    return False
                if err.retriable() and time.monotonic() < deadline:
                    self.log.warning("transaction_commit_retry", error=err.str())
                    continue
                # Abortable, or retried too long: abort; nothing of it was committed, so it is redone.
                self.log.warning("transaction_aborted", error=err.str())
                self.abort(rewind=rewind_on_abort)
                return False

    def abort(self, rewind: bool) -> None:
        if self.in_transaction:
            try:
                self._guarded(self.producer.abort_transaction, self.timeout_s)
                self.in_transaction = False
                self.metrics.rewinds.inc()
            except (KafkaException, _Stuck) as exc:
                error = exc.args[0] if isinstance(exc, KafkaException) else None
                if error is not None and error.fatal():
                    self._replace_fatal("abort_transaction failed", error)
                else:
                    # A broker away too long or a hung call: a new producer aborts the transaction by fencing.
                    self._renew(f"abort_transaction failed: {error.str() if error else exc}")
        if rewind:
            self._rewind()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset: the aborted work is redone."""

        def seek_back(_attempt: int) -> None:
            assignment = self.consumer.assignment()
            committed = self.consumer.committed(assignment, timeout=self.timeout_s) if assignment else []
            for tp in committed:
                if tp.offset < 0:  # nothing committed yet: auto.offset.reset is earliest
                    tp.offset = OFFSET_BEGINNING
                self.consumer.seek(tp)

        def again(_attempt: int, wait_s: float, error: BaseException) -> None:
            self.log.warning("rewind_retry", error=error.args[0].str(), retry_in_s=wait_s)

        retry(
            seek_back,
            retry_on=(KafkaException,),
            retry_max_s=self.retry_max_s,
            on_retry=again,
            stop=self.stop,
        )

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was done for these partitions while they are still ours; if that fails, it is
        # aborted and the next owner redoes it from the last commit.
        self.commit(rewind_on_abort=False)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.abort(rewind=False)

    def close(self) -> None:
        if self.in_transaction:
            try:
                self.commit()
            except ServingError as exc:
                self.log.error("final_commit_failed", error=str(exc))
        self.producer.flush(self.timeout_s)
