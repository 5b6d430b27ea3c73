"""Every message of a partition once, in offset order: the join's and the watch's guard against their
consumer skipping or repeating messages across a rebalance.

Why. When a rebalance hands a worker a partition, Faust 0.15's recovery resumes the partition and only then
seeks it to the group's committed offset; messages fetched in between are delivered to the agent, and
delivered again after the seek. Its read-offset bookkeeping across that seek can also pass over a message
while the ones after it are acknowledged, so the group's offset moves past a message no agent ever saw.
Reproduced with two monitor workers, one SIGKILLed (tests/faults/test_monitor_workers.py): the survivor
was handed the dead worker's joinable partition and never joined one of its messages (35 requests of
4,000 never labelled, the partition's committed offset far past it).

The same pass-over hit the labelled stream: the survivor took over the dead worker's labelled partition
and never counted 43 to 315 of its 4,000 labelled requests (in 3 of 18 runs of that test).

One way this happens was found later (:mod:`streams.fetch_guard`): the fetch in flight when a rebalance
begins takes records after it and Faust drops them. The guard here stays, for any other way.

So the join keeps, with its state (the ``pending`` table), the next offset it expects on each partition,
and the watch keeps its own with the windows (the ``windows`` table, :data:`LABELLED_OFFSET_KEYS`). A
message below it was processed already and its effects are in the state: it is skipped. A message above
it means the consumer passed over the ones in between: they are read from the broker directly
(:func:`read_range`) and processed first. Offsets, not clocks, decide what was seen.

The sources were read by a Faust agent too, and the same test lost 4 requests that way, their predictions
and outcomes never routed; a plain consumer reads them now (:mod:`streams.source_reader`). The failures
agent still reads the dead letters in Faust; they may carry a transactional producer's commit markers
(gaps that are no messages), so it checks only the first message of each partition after a rebalance,
against the group's committed offset noted then (:func:`committed_offsets`,
``WatchAgents.note_dead_letter_starts``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Message, TopicPartition

from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings

#: What :meth:`PartitionOffsets.missed` returns for a message processed before.
SEEN = None
#: The ``windows`` table's key of the watch's next labelled offset, by partition (the join keeps its own in
#: its clocks records, :mod:`streams.tables`).
LABELLED_OFFSET_KEYS = "offset:labelled:"


@dataclass
class PartitionOffsets:
    """The next offset expected on each partition (absent: nothing known yet, any offset is next)."""

    next: dict[int, int] = field(default_factory=dict)

    def missed(self, partition: int, offset: int) -> range | None:
        """The offsets passed over before message ``offset`` of ``partition`` (an empty range: none), or
        :data:`SEEN` for a message processed already."""
        expected = self.next.get(partition)
        if expected is None or offset == expected:
            return range(offset, offset)
        if offset < expected:
            return SEEN
        return range(expected, offset)

    def done(self, partition: int, offset: int) -> None:
        """Message ``offset`` of ``partition`` is processed."""
        self.next[partition] = max(self.next.get(partition, 0), offset + 1)

    @classmethod
    def restore(cls, records: Iterable[tuple[str, Any]], owned: Collection[int]) -> PartitionOffsets:
        """The next offsets of the ``owned`` partitions in a table's records (:data:`LABELLED_OFFSET_KEYS`
        keys)."""
        n = len(LABELLED_OFFSET_KEYS)
        return cls(
            {
                int(key[n:]): int(value["next_offset"])
                for key, value in records
                if key.startswith(LABELLED_OFFSET_KEYS) and int(key[n:]) in owned
            }
        )

    def records(self, partitions: Iterable[int]) -> list[tuple[int, str, dict[str, int]]]:
        """(partition, key, value) of the next offsets of ``partitions``, to write to the table."""
        return [(p, f"{LABELLED_OFFSET_KEYS}{p}", {"next_offset": self.next[p]}) for p in sorted(partitions)]


def read_range(
    settings: Settings, topic: str, partition: int, offsets: range, timeout: float = 30.0
) -> list[Message]:
    """The messages of ``topic[partition]`` at ``offsets`` (those still on the broker), read with
    ``assign()``: no group is joined and nothing is committed."""
    if not offsets:
        return []
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}monitor-gap-reader")
    try:
        low, high = kafka.watermarks(consumer, topic, partition, timeout=timeout)
        start, stop = max(offsets.start, low), min(offsets.stop, high)
        if start >= stop:
            return []
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaClientError(f"cannot read {topic}[{partition}]: {err.str()}")
                    continue
                offset = msg.offset()
                if offset is not None and start <= offset < stop:
                    out.append(msg)
                if offset is not None and offset >= stop - 1:
                    return out
        raise KafkaClientError(f"timed out reading {topic}[{partition}] at {start}..{stop - 1}")
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, group: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The offsets ``group`` has committed on ``partitions`` (those it has committed on)."""
    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return {}
    admin = kafka.admin(settings)
    request = [ConsumerGroupTopicPartitions(group, wanted)]
    answer = admin.list_consumer_group_offsets(request, request_timeout=10)[group].result()
    return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
