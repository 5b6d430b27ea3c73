"""The join's pending requests in segments, a few records per batch (streams.pending)."""

from __future__ import annotations

import heapq
import random
import tracemalloc
from typing import Any

import pytest

from streams.pending import SEGMENT_BYTES, PendingStore
from streams.tables import load_join_state
from streams.watermarks import Clocks


class Table(dict[str, Any]):
    """Just enough of a PartitionedTable for the store; it logs each write, as the changelog would get it."""

    writing_partition: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.log: list[tuple[str, Any]] = []  # (key, value); value None: deleted

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, None))
        super().__delitem__(key)


def prediction(i: int, candidates: int = 20) -> dict[str, Any]:
    items = [f"item-{i % 997:05d}-{j:02d}" for j in range(candidates)]
    return {
        "kind": "prediction",
        "ts": 1_000 + i,
        "version": "v1",
        "candidates": items,
        "recommended": items[:5],
    }


def restored(table: dict[str, Any], partition: int = 0) -> dict[str, Any]:
    return dict(PendingStore(table, partition).restore().items())


def test_a_batch_of_requests_is_a_record_or_two_and_goes_once_they_are_resolved() -> None:
    table = Table()
    store = PendingStore(table, 3)
    for i in range(1000):
        store.put(f"r{i}", prediction(i))
    store.flush(Clocks(), next_offset=10)
    assert sorted(table) == ["b:3:0", "b:3:1", "c:3"]  # a few segments and the clocks, not a record each
    assert restored(table, 3) == {f"r{i}": prediction(i) for i in range(1000)}
    for i in range(1000):
        assert store.get(f"r{i}") == prediction(i)
        store.delete(f"r{i}")
    store.flush(Clocks(), next_offset=20)
    assert sorted(table) == ["c:3"] and store.segments == 0  # every request resolved: the segments go
    assert len([key for key, _ in table.log if key.startswith("b:")]) == 6  # three written, three deleted


def test_what_is_read_back_is_what_the_join_sees_after_any_batch() -> None:
    """Random batches of additions, replacements (a shadow joining its request) and removals."""
    rng = random.Random(7)
    table = Table()
    store = PendingStore(table, 0)
    model: dict[str, Any] = {}
    for batch in range(200):
        for _ in range(rng.randint(0, 60)):
            rid = f"r{rng.randint(0, 400)}-é"  # not ASCII: lines are located in characters
            roll = rng.random()
            if roll < 0.5:
                model[rid] = prediction(batch * 1000 + rng.randint(0, 999), rng.randint(1, 30))
                store.put(rid, model[rid])
            elif roll < 0.6 and rid in model:
                model[rid] = {
                    **model[rid],
                    "shadow": {"version": "v2", "candidates": ["ü"], "recommended": []},
                }
                store.put(rid, model[rid])
            else:
                model.pop(rid, None)
                store.delete(rid)
            assert store.get(rid) == model.get(rid)
        store.flush(Clocks(), next_offset=batch)
        assert dict(store.items()) == model
        assert restored(table) == model, batch
    assert store.segments < 30  # resolved segments were deleted


def test_a_crash_anywhere_in_a_batch_leaves_each_request_as_before_or_after_it() -> None:
    """Whatever prefix of a batch's writes reaches the changelog, every request reads back as it was
    before the batch or as it is after; once the clocks are written, as after (offsets move with them)."""
    rng = random.Random(3)
    table = Table()
    store = PendingStore(table, 0)
    model: dict[str, Any] = {}
    for batch in range(80):
        before, snapshot = dict(model), dict(table)
        for _ in range(rng.randint(1, 300)):
            rid = f"r{rng.randint(0, 600)}"
            if rng.random() < 0.55:
                model[rid] = prediction(rng.randint(0, 10**6), 3)
                store.put(rid, model[rid])
            else:
                model.pop(rid, None)
                store.delete(rid)
        table.log.clear()
        store.flush(Clocks(), next_offset=batch)
        writes = list(table.log)
        clocks_at = next(i for i, (key, _) in enumerate(writes) if key == "c:0")
        for cut in range(len(writes) + 1):
            crashed = dict(snapshot)
            for key, value in writes[:cut]:
                if value is None:
                    crashed.pop(key, None)
                else:
                    crashed[key] = value
            state = restored(crashed)
            if cut > clocks_at:
                assert state == model, (batch, cut)
            for rid in set(before) | set(model):
                assert state.get(rid) in (before.get(rid), model.get(rid)), (batch, cut, rid)


def test_a_long_waiting_request_does_not_keep_the_segments_after_it() -> None:
    """An outcome waits up to a day for its prediction: its segment is moved on, not kept with all the
    resolved segments after it."""
    table = Table()
    store = PendingStore(table, 0)
    store.put("waits", {"kind": "outcome", "ts": 1, "purchased": ["a"]})
    previous: list[str] = []
    for batch in range(300):
        for rid in previous:
            store.delete(rid)
        previous = [f"b{batch}-{i}" for i in range(500)]
        for rid in previous:
            store.put(rid, prediction(batch, 5))
        store.flush(Clocks(), next_offset=batch)
        assert store.segments <= 3, batch
    assert store.get("waits") == {"kind": "outcome", "ts": 1, "purchased": ["a"]}
    assert restored(table)["waits"] == {"kind": "outcome", "ts": 1, "purchased": ["a"]}
    assert len(table) <= 4


def test_segments_stay_under_the_message_limit_however_large_the_batch() -> None:
    table = Table()
    store = PendingStore(table, 0)
    for i in range(3000):
        store.put(f"request-{i:032d}", prediction(i, 100))
    store.flush(Clocks())
    for i in range(0, 3000, 2):
        store.delete(f"request-{i:032d}")
    store.put("request-00000000000000000000000000000001", prediction(1, 1))  # replaced after its removal
    for i in range(3000, 20_000):  # removals alone too: requests never written are not removals
        store.delete(f"request-{i:032d}")
    store.flush(Clocks())
    texts = [value for key, value in table.items() if key.startswith("b:")]
    assert len(texts) > 5 and max(len(text.encode()) for text in texts) <= SEGMENT_BYTES
    expected = {f"request-{i:032d}": prediction(i, 100) for i in range(1, 3000, 2)}
    expected["request-00000000000000000000000000000001"] = prediction(1, 1)
    assert restored(table) == expected


def test_pending_requests_an_older_monitor_kept_one_a_record_are_read_and_moved_into_segments() -> None:
    table = Table(
        {
            "r:2:old": {"kind": "outcome", "ts": 1, "purchased": ["a"]},  # a dict, as the oldest kept them
            "r:2:packed": '{"kind":"outcome","ts":2,"purchased":[]}',  # packed, as the last did
            "r:2:short": {"k": "o", "ts": 3, "b": ["c"]},  # single-letter fields
        }
    )
    store = PendingStore(table, 2).restore()
    assert store.get("old") == {"kind": "outcome", "ts": 1, "purchased": ["a"]}
    assert store.get("short") == {"kind": "outcome", "ts": 3, "purchased": ["c"]}
    store.put("r1", prediction(1))
    store.flush(Clocks())
    assert not [key for key in table if key.startswith("r:")]
    entries, _markers, _clocks = load_join_state(table)[2]
    assert dict(entries) == {
        "old": {"kind": "outcome", "ts": 1, "purchased": ["a"]},
        "packed": {"kind": "outcome", "ts": 2, "purchased": []},
        "short": {"kind": "outcome", "ts": 3, "purchased": ["c"]},
        "r1": prediction(1),
    }


def test_a_pending_prediction_costs_under_a_kilobyte_table_included() -> None:
    """20 candidates, as the storefront sends: a dict with two lists of strings held some 2 KB. Here the
    segment's text (the table's copy, ~650 bytes a request) and an index entry."""
    table = Table()
    store = PendingStore(table, 0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(0, 10_000, 500):
        for i in range(start, start + 500):
            store.put(f"{i:08d}-4b1c-9a7e-{i:012d}", prediction(i))
        store.flush(Clocks())
    table.log.clear()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(store) == 10_000 and len(table) == 21  # 20 batches, a segment each, and the clocks
    assert held / 10_000 < 1000, f"{held / 10_000:.0f} bytes a pending prediction"


def test_the_join_on_segments_with_restarts_labels_as_the_join_on_a_dict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Predictions and outcomes out of order, flushed at random, restarted from the table now and then,
    the expiry heaps compacted often (by which requests the store holds): the same labelled requests
    and counts as the plain join's."""
    from streams import join
    from streams.join import Joiner
    from streams.join_store import DictStore

    monkeypatch.setattr(join, "HEAP_SLACK", 16)

    def event(kind: str, rid: str, ts: int, source: int) -> dict[str, Any]:
        if kind == "prediction":
            return {"kind": kind, "user": "u", "request_id": rid, "ts": ts, "version": "v1",
                    "candidates": ["a", "b", "c"], "recommended": ["a"], "source": source}  # fmt: skip
        return {"kind": kind, "request_id": rid, "ts": ts, "purchased": ["a"], "source": source}

    for seed in range(3):
        rng = random.Random(seed)
        restarts = 0.2 if seed < 2 else 0.0  # the last run without: the heaps only ever compacted
        arrivals = []
        for i in range(1500):
            ts = i * 3
            arrivals.append((ts + rng.randint(0, 50), event("prediction", f"r{i}", ts, i % 2)))
            if rng.random() < 0.9:
                late = ts + rng.randint(0, 900)
                arrivals.append((ts + rng.randint(0, 1500), event("outcome", f"r{i}", late, i % 3)))
        arrivals.sort(key=lambda a: a[0])
        table = Table()
        plain, segmented = Joiner(DictStore(), 1000), Joiner(PendingStore(table, 0), 1000)
        for j in (plain, segmented):
            for source in range(2):
                j.report("predictions", source, -1, False, 2)
            for source in range(3):
                j.report("outcomes", source, -1, False, 3)
        want, got = [], []
        for n, (_, e) in enumerate(arrivals):
            want += plain.event(dict(e))
            got += segmented.event(dict(e))
            if rng.random() < 0.05:  # the batch ends
                segmented.sync()
                store = segmented.store
                assert isinstance(store, PendingStore)
                store.flush(segmented.clocks, n)
                if rng.random() < restarts:  # a restart: the state from the table
                    restored_store = PendingStore(table, 0).restore()
                    restarted = Joiner(restored_store, 1000, clocks=segmented.clocks, stats=segmented.stats)
                    restarted.rebuild(restored_store.items(), restored_store.marker_records())
                    segmented = restarted
        assert got == want and segmented.stats == plain.stats, seed


def test_at_a_live_pace_a_joined_request_leaves_under_32_bytes_table_included() -> None:
    """A request joined at once leaves its marker for two label windows: its hash in the marker set and
    its share of the bucket's record in the table. Five requests a batch (a live pace) wrote a record of a
    few markers each: 118 bytes a request in all, against 56 when a closed bucket's records are merged into
    one, 48 with the marker set in sorted shards (58 with a half-full hash table), 37 with no array per
    bucket beside the records and no dict around a record's string, and 29 with buckets of ten seconds
    rather than one (a bucket's record, key and entries cost ~900 bytes whatever it holds). What is left:
    the hashes' base64 in the records (11), the set (8.3), and the expiry heaps' entries until their next
    compaction (~8 here, a fixed amount: :data:`streams.join.HEAP_SLACK`)."""
    from streams.join import Joiner

    class Unlogged(dict[str, Any]):  # the table without Table's log of every write
        writing_partition: int | None = None

    j = Joiner(PendingStore(Unlogged(), 0), 1_800_000)
    n = 30_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        rid, ts = f"0a1b2c3d-{i}", 1_000_000 + 20 * i  # 50 a second, a bucket
        j.event({"kind": "prediction", "user": "u", "request_id": rid, "ts": ts, "version": "v1",
                 "candidates": ["a", "b", "c"], "recommended": ["a"], "source": 0})  # fmt: skip
        j.event({"kind": "outcome", "request_id": rid, "ts": ts + 5, "purchased": ["a"], "source": 0})
        if i % 5 == 4:  # the batch ends
            j.sync()
            store = j.store
            assert isinstance(store, PendingStore)
            store.flush(j.clocks, i)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(j.markers) == n and held / n < 32, f"{held / n:.0f} bytes a request"


def test_at_a_steady_pace_the_joins_markers_level_off_after_two_label_windows() -> None:
    """Markers live two label windows: past that, each bucket forgotten makes room for one marked, so what
    they hold (the set, their records in the table and the keys) stops growing. A hundred requests a
    second, outcomes 1-3 s later, batches of five, label windows of a minute, six windows of event time:
    from the fourth window to the sixth it holds the same, where it grew by a window's markers (~20 bytes
    each) in the second, and would go on so without forgetting. (The expiry heaps are left out: they
    rise and fall by their compaction's slack, a fixed amount.)"""
    from streams.join import Joiner

    class Unlogged(dict[str, Any]):  # the table without Table's log of every write
        writing_partition: int | None = None

    window_ms = 60_000
    j = Joiner(PendingStore(Unlogged(), 0), window_ms)
    rng = random.Random(5)
    outcomes: list[tuple[int, str]] = []
    held: dict[int, int] = {}
    kept = [
        tracemalloc.Filter(True, "*/streams/markers.py"),
        tracemalloc.Filter(True, "*/streams/pending.py"),
    ]
    tracemalloc.start()
    for n, ts in enumerate(range(1_000_000, 1_000_000 + 6 * window_ms, 10), start=1):
        rid = f"{n:08x}-4b1c-9a7e-{rng.getrandbits(48):012x}"
        j.event({"kind": "prediction", "user": "u", "request_id": rid, "ts": ts, "version": "v1",
                 "candidates": ["a", "b", "c"], "recommended": ["a"], "source": 0})  # fmt: skip
        heapq.heappush(outcomes, (ts + rng.randint(1000, 3000), rid))
        while outcomes[0][0] <= ts:
            due, done = heapq.heappop(outcomes)
            j.event({"kind": "outcome", "request_id": done, "ts": due, "purchased": ["a"], "source": 0})
        if n % 5 == 0:
            j.sync()
            store = j.store
            assert isinstance(store, PendingStore)
            store.flush(j.clocks, n)
        if n % (window_ms // 10) == 0:
            snapshot = tracemalloc.take_snapshot().filter_traces(kept)
            held[n // (window_ms // 10)] = sum(stat.size for stat in snapshot.statistics("filename"))
    tracemalloc.stop()
    marking = held[2] - held[1]  # a window of markers added, none forgotten
    assert marking > 6_000 * 15, held
    assert abs(held[6] - held[4]) / 2 < 0.1 * marking, held  # a window's markers forgotten as many added
