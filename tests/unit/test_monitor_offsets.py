"""The join's offset guard (streams.offsets) and where it keeps the next offset (streams.tables)."""

from __future__ import annotations

from typing import Any

from streams.offsets import SEEN, PartitionOffsets
from streams.tables import PendingStore, load_join_offsets, load_join_state
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
