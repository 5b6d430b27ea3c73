"""A stream's watermark candidate, kept between events (streams.watermarks.StreamClock), against the same
clock's candidate found afresh from its partitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.watermarks import ALL_IDLE, StreamClock

OUT_OF_ORDER_MS = 1000

#: ("observe", partition, ts), ("report", partition, latest, idle), or ("expect", partitions).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), st.integers(0, 3), st.integers(0, 50)),
        st.tuples(st.just("report"), st.integers(0, 3), st.integers(-1, 50), st.booleans()),
        st.tuples(st.just("expect"), st.integers(1, 4)),
    ),
    max_size=60,
)


def afresh(clock: StreamClock) -> int | None:
    """The candidate of a copy that has kept nothing between events."""
    return StreamClock.from_dict(clock.as_dict()).candidate(OUT_OF_ORDER_MS)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_the_kept_least_event_time_is_always_the_partitions_least(ops: list[tuple]) -> None:
    clock = StreamClock()
    for op in ops:
        if op[0] == "observe":
            clock.observe(op[1], op[2])
        elif op[0] == "report":
            clock.report(op[1], op[2], op[3], 4)
        else:
            clock.expect(op[1])
        assert clock.candidate(OUT_OF_ORDER_MS) == afresh(clock)


def test_an_event_on_the_partition_that_held_the_watermark_back_moves_it() -> None:
    clock = StreamClock(partitions=2)
    clock.observe(0, 5_000)
    clock.observe(1, 9_000)
    assert clock.candidate(OUT_OF_ORDER_MS) == 4_000
    clock.observe(1, 12_000)  # not the least: nothing moves
    assert clock.candidate(OUT_OF_ORDER_MS) == 4_000
    clock.observe(0, 10_000)  # the least moves, to the other partition's
    assert clock.candidate(OUT_OF_ORDER_MS) == 9_000
    clock.report(0, 10_000, True, 2)  # idle: the other holds it alone
    assert clock.candidate(OUT_OF_ORDER_MS) == 11_000
    clock.report(1, 12_000, True, 2)
    assert clock.candidate(OUT_OF_ORDER_MS) is ALL_IDLE
    clock.observe(0, 10_500)  # back from idle
    assert clock.candidate(OUT_OF_ORDER_MS) == 9_500
