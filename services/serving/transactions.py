"""Exactly-once delivery: a consumed request counts as answered when its transaction commits.

**Exactly-once** (``--exactly-once``). Consume-transform-produce in Kafka transactions: predictions,
dead letters and the consumer's positions (``send_offsets_to_transaction`` with the group metadata) commit
atomically. One transaction gathers batches for ``transaction_ms`` to spread the commit's cost. An
abortable error aborts, renews the producer (a new epoch: see :meth:`ExactlyOnce._fresh_epoch`) and
rewinds the consumer to the last committed offsets. A fenced or otherwise fatally failed producer is
replaced by a new one with the same transactional id and the work since the last commit is redone: the
usual cause is a transaction that outlived ``transaction.timeout.ms`` while a broker failed over, which
the coordinator aborts by bumping the epoch. Fenced more than ``FENCINGS_PER_MINUTE`` times in a minute,
the replica gives up: another one runs with its instance id.
Readers of the output use ``isolation.level=read_committed``.
"""

from __future__ import annotations

import threading
import time
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
from services.serving.delivery import Delivery
from services.serving.logs import EventLog
from services.serving.metrics import ServeMetrics


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

    def _fresh_epoch(self) -> None:
        """After a clean abort, a new producer for the redone work. The old one keeps its epoch and its
        per-partition sequences, and those are wrong after a send that timed out yet was written (a leader
        that died or froze before answering): the broker takes the redone batches that reuse those
        sequences for duplicates, acknowledges them and writes nothing, so the requests are never answered
        (seen when a broker is SIGKILLed; cf. confluentinc/librdkafka#4134, #4953). A new producer's
        init_transactions bumps the epoch, which starts every partition's sequence afresh. Nothing hangs
        in the old one, so it is dropped rather than kept."""
        self.log.warning("producer_renewed_after_abort")
        self.producer = self.make_producer()
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
                self._fresh_epoch()
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
