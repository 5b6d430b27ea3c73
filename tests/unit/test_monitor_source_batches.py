"""The source reader's batches take the partitions in turn (streams.source_reader.in_turn): a backlog
fetched partition by partition still reaches the join as one stretch of time across partitions."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from streams.source_reader import in_turn


def test_a_batch_takes_one_message_of_each_partition_in_turn() -> None:
    # As librdkafka hands a backlog over: all of partition 0's fetch, then partition 1's, then 2's.
    queues = [deque((p, offset) for offset in range(5)) for p in range(3)]
    batch = in_turn(queues, 7)
    assert batch == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
    assert [list(q) for q in queues] == [[(0, 3), (0, 4)], [(1, 2), (1, 3), (1, 4)], [(2, 2), (2, 3), (2, 4)]]


@given(st.lists(st.integers(0, 30), max_size=6), st.integers(0, 100))
def test_in_turn_takes_what_it_can_keeping_each_partitions_order(sizes: list[int], most: int) -> None:
    queues = [deque((p, offset) for offset in range(n)) for p, n in enumerate(sizes)]
    batch = in_turn(queues, most)
    assert len(batch) == min(most, sum(sizes))
    for p in range(len(sizes)):
        mine = [offset for q, offset in batch if q == p]
        assert mine == list(range(len(mine)))  # each partition's messages in order, none skipped
    taken = [sum(1 for q, _ in batch if q == p) for p in range(len(sizes))]
    # In turn: no partition is more than one message ahead of another that still had messages.
    for a, b in ((a, b) for a in range(len(sizes)) for b in range(len(sizes))):
        if taken[b] < sizes[b]:
            assert taken[a] <= taken[b] + 1
