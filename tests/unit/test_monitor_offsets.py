"""The join's and the watch's offset guard (streams.offsets), and where they keep the next offset."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from confluent_kafka import Message

from streams.alerts import no_baseline
from streams.app import Monitor
from streams.decisions import Decisions
from streams.offsets import SEEN, PartitionOffsets
from streams.rollback import RollbackPolicy
from streams.tables import PendingStore, load_join_offsets, load_join_state
from streams.tracker import TrackerConfig
from streams.watch import Watch
from streams.watermarks import Clocks


def test_the_first_message_of_a_partition_is_next_whatever_its_offset() -> None:
    offsets = PartitionOffsets()
    assert offsets.missed(0, 40) == range(40, 40)
    offsets.done(0, 40)
    assert offsets.next == {0: 41}


def test_a_message_delivered_again_is_seen_and_a_jump_names_the_offsets_passed_over() -> None:
    offsets = PartitionOffsets({0: 62, 1: 5})
    assert offsets.missed(0, 40) is SEEN  # redelivered after the seek back to the committed offset
    assert offsets.missed(0, 61) is SEEN
    assert not offsets.missed(0, 62)
    assert offsets.missed(0, 63) == range(62, 63)  # 62 was passed over
    assert offsets.missed(1, 9) == range(5, 9)
    assert offsets.missed(2, 9) == range(9, 9)  # nothing known of partition 2


def test_done_never_moves_back() -> None:
    offsets = PartitionOffsets({0: 10})
    offsets.done(0, 3)
    assert offsets.next == {0: 10}


class Table(dict[str, Any]):
    """Just enough of a PartitionedTable for the store."""

    writing_partition: int | None = None


def test_the_next_offset_is_written_with_the_clocks_and_read_back_also_without_news() -> None:
    table = Table()
    store = PendingStore(table, 2)  # type: ignore[arg-type]
    store.flush(Clocks(), next_offset=7)  # a batch of reports only: nothing pending changed
    assert load_join_offsets(table) == {2: 7}
    store.put("r1", {"kind": "outcome", "ts": 1, "purchased": []})
    store.flush(Clocks(), next_offset=9)
    assert load_join_offsets(table) == {2: 9}
    entries, _markers, _clocks = load_join_state(table)[2]  # the clocks record still reads as clocks
    assert [rid for rid, _ in entries] == ["r1"]


def test_state_an_older_monitor_wrote_has_no_next_offset() -> None:
    table = Table({"c:0": Clocks().as_dict()})
    assert load_join_offsets(table) == {}


def test_the_watch_keeps_its_next_offsets_with_the_windows_and_reads_back_only_its_own() -> None:
    offsets = PartitionOffsets({0: 12, 2: 7})
    records = [(key, value) for _p, key, value in offsets.records([0, 2])]
    assert [p for p, _k, _v in offsets.records([2, 0])] == [0, 2]  # written on each partition's changelog
    assert PartitionOffsets.restore(records, owned={0, 1}).next == {0: 12}  # 2 is a standby's copy
    # A version's records beside them: the trackers are rebuilt from those alone.
    watch = Watch(TrackerConfig(count_window=10), Decisions(RollbackPolicy(0), no_baseline), no_baseline)
    assert watch.restore(records, owned={0, 2}) == 0 and watch.trackers == {}


class _Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = SimpleNamespace(partition=partition, offset=offset)
        self.value = f"m{offset}".encode()


def test_the_watch_counts_each_labelled_message_once_and_in_offset_order() -> None:
    """Around a rebalance Faust's consumer delivered messages again and passed over others (streams.offsets):
    the watch skips the first and reads the second from the broker, before the message after them."""
    read: list[tuple[int, range]] = []

    async def read_missed(topic: str, partition: int, missed: range) -> list[Message]:
        read.append((partition, missed))
        return [
            Message(topic=topic, partition=partition, offset=at, value=f"m{at}".encode()) for at in missed
        ]

    labelled = SimpleNamespace(get_topic_name=lambda: "rec.labelled")
    monitor = SimpleNamespace(
        watch_offsets=PartitionOffsets({0: 10}), labelled=labelled, _read_missed=read_missed
    )
    events = [_Event(0, 8), _Event(0, 9), _Event(0, 12), _Event(0, 13), _Event(1, 4)]
    batch = asyncio.run(Monitor._in_offset_order(cast(Any, monitor), cast(Any, events)))
    assert [(p, o) for _v, p, o in batch] == [(0, 10), (0, 11), (0, 12), (0, 13), (1, 4)]
    assert all(v == f"m{o}".encode() for v, _p, o in batch)
    assert read == [(0, range(10, 12))]
    assert monitor.watch_offsets.next == {0: 14, 1: 5}
