"""The join's first step on a plain Kafka consumer: predictions, shadow predictions and outcomes read,
checked and repartitioned to ``<app id>-joinable`` (:mod:`streams.routing`), in a thread of the monitor's
worker.

**Why not a Faust agent.** Faust hands every message it consumes through asyncio: a task or two per
message in its consumer's drain loop, a queue, the stream's iterator, its sensors, its acknowledgement
bookkeeping. Every labelled request is two source messages (its prediction and its outcome), and the
rest of the monitor works in bundles of hundreds, so the source messages were most of the worker's
framework cost: a py-spy profile of the worker on the bench's 20,000 labelled requests put Faust's drain
loop and stream machinery at over 40% of its CPU. Here librdkafka fetches in its own threads and this
loop routes a batch of up to ``monitor.batch_size`` messages per poll.

**Delivery: at least once.** A batch's bundles and dead letters are on the broker (acknowledged by all
in-sync replicas) before its offsets are committed; a crash, or a send that fails, routes the batch again
from the committed offsets, and the join recognises what it has seen (its pending entries and markers,
:mod:`streams.join`). A rebalance revokes partitions only between batches (the callbacks run inside the
poll), when everything routed is sent and committed.

**Order.** One thread routes and sends: a bundle's reports account for every event routed before it and
reach each join partition after them (idempotent producer: no reordering on retries).

**Group.** Its own consumer group, ``<app id>-route``: a model's workers share the source partitions
between them, independently of the Faust group, which reads the monitor's internal topics. A partition
the group has no offset for starts where the Faust group had one (its route agent read the sources until
this change), so an upgraded monitor does not route again what it routed before; else at the earliest.

**Memory: what is fetched and not yet routed is bounded.** A batch waits for every partition that has
messages left to read (see :meth:`SourceReader._batch`), so on a backlog the reader fetches ahead of what
it routes. A partition that holds ``monitor.batch_size`` fetched messages is paused (librdkafka then drops
what it had prefetched of it and fetches the others) and resumed once down to half of that; it fetches again
from the message after the last one handed over. Without this, a million-request backlog held 330,000
fetched messages in the reader (each keeping its fetch buffer alive in librdkafka) and the worker's resident
memory grew with the backlog.

**Idle.** A source partition is idle when it has been quiet for the idle timeout *and* is read to its end:
the high watermark librdkafka learned from its last fetch response for that partition (cached, no request),
against the offset after the last message routed, or where the partition started (streams.routing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from confluent_kafka import OFFSET_INVALID, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition

from services import kafka
from services.config import Settings
from streams.join import SHADOW
from streams.offsets import committed_offsets
from streams.routing import Router, dead_letter

log = logging.getLogger("modelwatch.monitor")


T = TypeVar("T")

#: A held fetch of the sources is answered once it has this much: at 300 requests/s (a prediction and an
#: outcome each, ~800 bytes) about a quarter of a second's worth, so ``monitor.batch_within_s`` decides.
FETCH_GATHER_BYTES = 64 * 1024


def in_turn(queues: Iterable[deque[T]], most: int) -> list[T]:
    """Up to ``most`` items taken from the queues in turn, one from each while it has any (Faust's consumer
    delivered a fetch's partitions so: :meth:`SourceReader._batch` says why it matters)."""
    out: list[T] = []
    live = [q for q in queues if q]
    while live and len(out) < most:
        for q in live[: most - len(out)]:
            out.append(q.popleft())
        live = [q for q in live if q]
    return out


class SourceReader:
    """Reads the source topics in a thread and sends the router's bundles to the joinable topic."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        joinable_topic: str,
        on_invalid: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.group = settings.monitor_route_group
        self.faust_group = settings.monitor_app_id  # where the route agent of earlier monitors committed
        self.router = router
        self.joinable_topic = joinable_topic
        self.on_invalid = on_invalid
        self.kinds = {
            settings.topic("predictions"): "predictions",
            settings.topic("outcomes"): "outcomes",
            settings.topic("predictions.shadow"): SHADOW,
        }
        self.streams = {kind: topic for topic, kind in self.kinds.items()}
        self.dlq_topic = settings.topic("outcomes.dlq")
        self.partitions = router.partitions  # the source topics have as many (streams.connection)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="modelwatch-source-reader", daemon=True)
        self.routed = 0  # source messages routed, for the stats line
        self._consumer: Consumer | None = None
        self._owned: set[tuple[str, int]] = set()  # the partitions assigned now
        self._buffered: dict[tuple[str, int], deque[Any]] = {}  # fetched, not yet routed (_batch)
        self._fetched: dict[tuple[str, int], int] = {}  # the offset after the last message fetched
        self._paused: set[tuple[str, int]] = set()  # holding a full buffer: not fetched (_hold)
        self.most_held = 0  # the most messages fetched and not yet routed at once, for the stats line
        router.highwater = self._highwater

    def start(self) -> None:
        if not self.thread.is_alive() and not self.stop_event.is_set():
            self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in hand (sent and committed, or left to be routed again) and leave the
        group, so that the other workers take its partitions at once."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        retry_s = 0.5
        while not self.stop_event.is_set():
            try:
                self._session()
                return
            except Exception as exc:  # a send or commit that failed: start again from the committed offsets
                log.warning("source reader: %r; again from the committed offsets in %.1fs", exc, retry_s)
                self.stop_event.wait(retry_s)
                retry_s = min(2 * retry_s, self.settings.serve.retry_max_s)

    def _session(self) -> None:
        m = self.settings.monitor
        consumer = kafka.consumer(
            self.settings,
            self.group,
            **{
                # A session as short as the Faust group's: a SIGKILLed worker's sources move on as quickly.
                "session.timeout.ms": int(m.session_timeout_s * 1000),
                # At a live pace a fetch answered at the first message (librdkafka's default: 1 byte) came
                # back hundreds of times a second, each response handled by librdkafka's broker thread
                # (5% of a core at 300 requests/s): the broker holds a fetch as long as a batch waits to
                # fill anyway, or until it has FETCH_GATHER_BYTES. A backlog has that at once.
                "fetch.wait.max.ms": max(1, int(m.batch_within_s * 1000)),
                "fetch.min.bytes": FETCH_GATHER_BYTES,
            },
        )
        producer = kafka.producer(self.settings)
        self._consumer = consumer
        self._paused.clear()  # a new consumer: nothing paused
        failed: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(err.str())

        report_every = min(1.0, m.idle_timeout_s / 4)  # as often as the join needs to hear of quiet sources
        last_sent = 0.0
        try:
            consumer.subscribe(
                list(self.kinds), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
            )
            while not self.stop_event.is_set():
                batch = self._batch(consumer, report_every)
                dead = [self._route(msg) for msg in batch]
                if not batch and (time.monotonic() - last_sent < report_every or not self.router.sources):
                    continue  # reports only: sent every report_every, when there is a source to report on
                for partition, bundle in self.router.bundles():
                    producer.produce(self.joinable_topic, bundle, partition=partition, on_delivery=delivered)
                for letter in filter(None, dead):
                    key, value = letter
                    producer.produce(self.dlq_topic, value, key, on_delivery=delivered)
                while producer.flush(1.0) > 0:
                    if self.stop_event.is_set():
                        return  # not committed: routed again by the next owner
                if failed:
                    raise KafkaException(f"sending bundles: {failed[0]}")
                last_sent = time.monotonic()
                if batch:
                    self.routed += len(batch)
                    done: dict[tuple[str, int], int] = {}
                    for msg in batch:  # in offset order within a partition
                        done[(msg.topic(), msg.partition())] = msg.offset() + 1
                    try:  # what was routed, not the consumer's position: it has fetched further
                        consumer.commit(
                            offsets=[TopicPartition(t, p, at) for (t, p), at in done.items()],
                            asynchronous=False,
                        )
                    except KafkaException as exc:  # a rebalance under way: the next owner routes it again
                        log.info("source reader: commit not taken (%s); the batch may be routed again", exc)
        finally:
            self._consumer = None
            try:
                consumer.close()  # leaves the group
            except Exception as exc:  # a broker gone: the session timeout frees the partitions
                log.debug("closing the source reader's consumer: %r", exc)

    def _batch(self, consumer: Consumer, wait_s: float) -> list[Any]:
        """Up to ``batch_size`` messages, one partition's after another's in turn (the next of each), from
        the messages fetched so far; first fetched until every partition with messages left to read has
        some, or ``batch_within_s`` after the first (which is waited for up to ``wait_s``).

        Why in turn. librdkafka hands over a fetch partition by partition. Routed in that order, a backlog
        (after a restart, an outage) reaches the join one partition's stretch of time after another's,
        and a version's count window sees the traffic's phases once per partition: an alert that fired and
        resolved fires and resolves again. Taken in turn, as Faust's consumer delivered them, every batch
        spans about the same stretch of event time on every partition, and the join orders each batch's
        labelled requests by event time."""
        m = self.settings.monitor
        buffered = self._buffered
        deadline: float | None = None
        while True:
            held = sum(len(q) for q in buffered.values())
            self.most_held = max(self.most_held, held)
            if held >= m.batch_size and not self._starving():
                break
            if deadline is None:
                timeout = wait_s if held == 0 else m.batch_within_s
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            fetched = consumer.consume(m.batch_size, timeout=timeout)
            if deadline is None:
                if not fetched and held == 0:
                    return []
                deadline = time.monotonic() + m.batch_within_s
            for msg in fetched:
                err = msg.error()
                if err is not None:
                    log.warning("source reader: %s", err.str())
                    continue
                key = (msg.topic(), msg.partition())
                if key in self._owned:  # a rebalance inside the poll may have taken it away
                    buffered.setdefault(key, deque()).append(msg)
                    self._fetched[key] = cast(int, msg.offset()) + 1
            self._hold(consumer, m.batch_size)
        batch = in_turn(buffered.values(), m.batch_size)
        self._hold(consumer, m.batch_size)
        return batch

    def _hold(self, consumer: Consumer, most: int) -> None:
        """Pause the partitions holding ``most`` fetched messages or more, resume those down to half of it
        (a margin, so that a partition is not paused and resumed batch after batch: each pause drops what
        librdkafka had prefetched of it; with ``most`` 1, once empty).

        A paused partition given up in a rebalance has its buffer dropped, so it is resumed here too, owned
        or not: librdkafka keeps an application's pause across an unassign and a later assign, and resuming
        a partition no longer assigned clears it (both checked by hand against the broker)."""
        buffered, paused = self._buffered, self._paused
        full = [key for key, q in buffered.items() if len(q) >= most and key not in paused]
        if full:
            consumer.pause([TopicPartition(t, p) for t, p in full])
            paused.update(full)
        low = [key for key in paused if len(buffered.get(key, ())) <= most // 2]
        if low:
            consumer.resume([TopicPartition(t, p) for t, p in low])
            paused.difference_update(low)

    def _starving(self) -> bool:
        """Whether a partition has nothing fetched while the broker holds more of it (by the high watermark
        of its last fetch response; unknown: not starving)."""
        for key in self._owned:
            if not self._buffered.get(key):
                high = self._high(*key)
                fetched = self._fetched.get(key)
                if high is not None and fetched is not None and fetched < high:
                    return True
        return False

    def _route(self, msg: Any) -> tuple[bytes | None, bytes] | None:
        """One source message to the router; a dead letter for a contract-invalid or implausible outcome."""
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        kind = self.kinds[topic]
        ts_type, ts = msg.timestamp()
        broker_ms = ts if ts_type != TIMESTAMP_NOT_AVAILABLE else None
        rejected = self.router.route(kind, partition, self.partitions, broker_ms, msg.value(), offset)
        if rejected is None:
            return None
        error, why = rejected
        if why == "invalid":
            self.on_invalid()
        log.warning("skipped %s[%d]@%d: %s", topic, partition, offset, error)
        if kind == "outcomes":  # a bad prediction's request was dead-lettered by the service
            return dead_letter(error, msg.key(), msg.value(), topic, partition, offset)
        return None

    # -- assignment ------------------------------------------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Where each partition starts: the group's offset, else the Faust group's (an upgrade), else the
        earliest. The router knows the partition read up to there until its first message comes."""
        starts = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(partitions, timeout=30)
            if tp.offset >= 0
        }
        missing = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) not in starts]
        if missing:
            earlier = committed_offsets(self.settings, self.faust_group, missing)
            starts.update({key: offset for key, offset in earlier.items() if offset >= 0})
        placed = []
        for tp in partitions:
            start = starts.get((tp.topic, tp.partition))
            if start is None:
                start = consumer.get_watermark_offsets(tp, timeout=30)[0]  # the earliest
            placed.append(TopicPartition(tp.topic, tp.partition, start))
            kind = self.kinds[tp.topic]
            if kind != SHADOW:  # shadow partitions hold no watermark (streams.routing)
                self.router.assign(kind, tp.partition, self.partitions)
                self.router.started(kind, tp.partition, start)
        consumer.assign(placed)
        self._owned = {(tp.topic, tp.partition) for tp in placed}
        # Read again from where each partition starts; in place: a batch being gathered holds these.
        self._buffered.clear()
        self._fetched.clear()
        self._fetched.update({(tp.topic, tp.partition): tp.offset for tp in placed})
        log.info(
            "source reader: reading %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in placed) or "nothing",
        )

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # fetched, not routed: left to the next owner, from the last commit
            self._owned.discard((tp.topic, tp.partition))
            self._buffered.pop((tp.topic, tp.partition), None)
            self._fetched.pop((tp.topic, tp.partition), None)
            kind = self.kinds[tp.topic]
            if kind != SHADOW:
                self.router.revoke(kind, tp.partition)
        consumer.unassign()

    def _highwater(self, stream: str, partition: int) -> int | None:
        """The high watermark of a source partition from the consumer's last fetch response (``None``
        before the first)."""
        return self._high(self.streams[stream], partition)

    def _high(self, topic: str, partition: int) -> int | None:
        consumer = self._consumer
        if consumer is None:
            return None
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            return None
        return None if high == OFFSET_INVALID or high < 0 else high
