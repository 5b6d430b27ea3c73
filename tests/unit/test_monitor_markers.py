"""The join's compact markers: a hash set in an array, buckets forgotten whole, chunks written per batch."""

from __future__ import annotations

import random
import tracemalloc

from streams.join import MARKER_BUCKET_S, Joiner
from streams.join_store import DictStore
from streams.markers import (
    MERGED_MARKERS,
    SHARD_MEMBERS,
    HashSet,
    Markers,
    SeqHashes,
    decode_hashes,
    encode_hashes,
    request_hash,
)


def test_request_hash_is_stable_and_never_a_slot_marker() -> None:
    # Persisted: the same id hashes alike in every process (Python's own hash() is salted per process).
    assert request_hash("r-1") == request_hash("r-1") != request_hash("r-2")


def _walk(pool: list[int], adds: float, seed: int) -> tuple[HashSet, set[int]]:
    """60,000 random adds (share ``adds``) and discards of ``pool``'s members, in a HashSet and a set."""
    rng = random.Random(seed)
    mine, ref = HashSet(), set()
    for _ in range(60_000):
        h = rng.choice(pool)
        if rng.random() < adds:
            mine.add(h)
            ref.add(h)
        else:
            mine.discard(h)
            ref.discard(h)
    return mine, ref


def test_hash_set_against_a_python_set() -> None:
    pool = list(range(2, 5000))  # small: many repeats and deletions of present and absent members
    mine, ref = _walk(pool, 0.6, seed=7)
    assert len(mine) == len(ref)
    assert all((h in mine) == (h in ref) for h in pool)


def test_hash_set_splits_its_shards_and_stays_a_set() -> None:
    """Full-width hashes, enough to double the shards several times, with deletions and the extremes."""
    rng = random.Random(11)
    pool = [2, 2**63 - 1, 2**63, 2**64 - 1] + [rng.randrange(2, 2**64) for _ in range(12_000)]
    mine, ref = _walk(pool, 0.75, seed=11)
    assert len(mine) == len(ref) > 8 * SHARD_MEMBERS  # split at least three times
    assert all((h in mine) == (h in ref) for h in pool)
    for h in list(ref):
        mine.discard(h)
    assert len(mine) == 0 and not any(h in mine for h in pool)


def test_markers_are_forgotten_a_bucket_at_a_time_and_round_trip() -> None:
    markers = Markers()
    markers.mark(request_hash("a"), 5)
    markers.mark(request_hash("b"), 6)
    first = markers.unwritten()
    markers.mark(request_hash("c"), 6)
    second = markers.unwritten()
    assert [(b, c) for b, c, _ in first] == [(5, 0), (6, 0)] and [(b, c) for b, c, _ in second] == [(6, 1)]
    restored = Markers.load(first + second)
    assert all(request_hash(r) in restored for r in "abc")
    assert restored.forget_oldest() == (5, [0])
    assert request_hash("a") not in restored and request_hash("b") in restored
    assert sorted(restored.forget_oldest()[1]) == [0, 1] and len(restored) == 0


def test_hashes_encode_compactly() -> None:
    markers = Markers()
    for i in range(1000):
        markers.mark(request_hash(f"req-{i}"), 0)
    [(_, _, value)] = markers.unwritten()
    assert isinstance(value, str) and len(value) < 11 * 1000  # base64 of 8 bytes a marker, no dict around it
    assert list(decode_hashes(value)) == [request_hash(f"req-{i}") for i in range(1000)]


def test_an_older_monitors_chunks_and_buckets_are_read() -> None:
    assert list(decode_hashes({"ids": ["x", "y"]})) == [request_hash("x"), request_hash("y")]
    assert list(decode_hashes({"h": encode_hashes(decode_hashes({"ids": ["x"]}))})) == [request_hash("x")]
    old = Markers.load(
        [(3, None, {"ids": ["a"]}), (3, 0, {"h": encode_hashes(decode_hashes({"ids": ["b"]}))})]
    )
    assert request_hash("a") in old and request_hash("b") in old
    [(bucket, [(chunk, value)], replaced)] = old.merge_closed(4)  # written again in this monitor's form
    assert (bucket, chunk, sorted(replaced, key=str)) == (3, 1, [0, None])
    assert sorted(decode_hashes(value)) == sorted([request_hash("a"), request_hash("b")])
    assert old.forget_oldest() == (3, [1]) and len(old) == 0


def test_a_marker_costs_a_few_dozen_bytes() -> None:
    """What the markers hold for 100,000 requests, their records' strings included (the table holds the same
    strings; the ids themselves are the caller's, and freed)."""
    ids = [f"{i:08d}-4b1c-9a7e-{i:012d}" for i in range(100_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    markers = Markers()
    for i, rid in enumerate(ids):
        markers.mark(request_hash(rid), i // 300)
    markers.unwritten()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # 20 measured; 39 with a half-full hash table and an array per bucket, the records not counted
    assert held / len(ids) < 24, f"{held / len(ids):.0f} bytes a marker"


def test_the_join_writes_only_new_markers_per_batch() -> None:
    store = DictStore()
    j = Joiner(store, 1000)
    j.prediction({"kind": "prediction", "request_id": "r1", "ts": 10, "version": "v", "candidates": ["a"],
                  "recommended": ["a"]})  # fmt: skip
    j.outcome({"kind": "outcome", "request_id": "r1", "ts": 20, "purchased": ["a"]})
    j.sync()
    j.prediction({"kind": "prediction", "request_id": "r2", "ts": 30, "version": "v", "candidates": ["a"],
                  "recommended": ["a"]})  # fmt: skip
    j.outcome({"kind": "outcome", "request_id": "r2", "ts": 40, "purchased": []})
    j.sync()
    j.sync()  # nothing new: nothing written
    assert sorted(store.markers) == [(0, 0), (0, 1)]
    assert [len(decode_hashes(v)) for v in store.markers.values()] == [1, 1]
    assert MARKER_BUCKET_S == 10


def test_seq_hashes_keep_what_is_not_forgotten() -> None:
    seen = SeqHashes()
    for seq, rid in enumerate("abcd", start=1):
        seen.push(seq, request_hash(rid))
    seen.forget_before(2)
    assert len(seen) == 3 and seen.first_seq == 2 and request_hash("a") not in seen
    assert all(request_hash(r) in seen for r in "bcd")
    seen.push(7, request_hash("g"))  # a gap: positions 5 and 6 hold nothing
    seen.forget_before(7)
    assert len(seen) == 1 and seen.first_seq == 7 and request_hash("d") not in seen
    seen.forget_before(8)
    assert len(seen) == 0 and seen.first_seq is None and request_hash("g") not in seen


def test_a_version_remembers_its_horizon_in_a_few_dozen_bytes_a_request() -> None:
    """The tracker's replay dedupe at its default horizon (50,000): no Python object per request."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    seen = SeqHashes()
    for i in range(1, 120_001):
        seen.push(i, request_hash(f"{i:08d}-4b1c-9a7e-{i:012d}"))
        seen.forget_before(i - 50_000 + 1)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # 21 measured; 56 with a half-full open-addressing table
    assert len(seen) == 50_000 and held / 50_000 < 28, f"{held / 50_000:.0f} bytes a request"


def test_a_closed_bucket_is_merged_into_one_chunk_once() -> None:
    markers = Markers()
    markers.mark(request_hash("a"), 5)
    first = markers.unwritten()
    markers.mark(request_hash("b"), 5)
    second = markers.unwritten()
    assert markers.merge_closed(5) == []  # still open: markers may still go there
    [(bucket, [(chunk, value)], replaced)] = markers.merge_closed(6)
    assert (bucket, chunk, replaced) == (5, 2, [0, 1])
    assert sorted(decode_hashes(value)) == sorted(request_hash(r) for r in "ab")
    assert markers.merge_closed(7) == []  # once
    assert markers.forget_oldest() == (5, [2])  # forgetting the bucket deletes the merged chunk
    merged = [(bucket, chunk, value)]
    assert all(request_hash(r) in Markers.load(merged) for r in "ab")
    # Killed between the merged record and the deletions: each marker once, every chunk deleted with it.
    both = Markers.load(first + second + merged)
    assert len(both) == 2
    [(_, [(again, value)], replaced)] = both.merge_closed(6)  # written again once, each marker once
    assert (again, replaced) == (3, [0, 1, 2]) and sorted(decode_hashes(value)) == sorted(
        decode_hashes(merged[0][2])
    )
    assert both.forget_oldest() == (5, [3]) and len(both) == 0
    both = Markers.load(first + second + merged)  # forgotten before it is merged: every chunk deleted
    assert both.forget_oldest() == (5, [0, 1, 2]) and len(both) == 0


def test_at_a_live_pace_the_store_holds_about_a_record_per_closed_bucket() -> None:
    """Five requests a batch, 500 a bucket: a hundred chunks a bucket until it closes, then one."""
    store = DictStore()
    j = Joiner(store, 1_800_000)
    for i in range(5000):
        rid, ts = f"r{i}", 20 * i
        j.prediction({"kind": "prediction", "request_id": rid, "ts": ts, "version": "v", "candidates": ["a"],
                      "recommended": ["a"]})  # fmt: skip
        j.outcome({"kind": "outcome", "request_id": rid, "ts": ts + 5, "purchased": ["a"]})
        if i % 5 == 4:
            j.sync()
    buckets = {bucket for bucket, _ in store.markers}
    assert len(buckets) == 10 and len(store.markers) <= len(buckets) + 100
    assert sum(len(decode_hashes(v)) for v in store.markers.values()) == 5000


def test_an_older_monitors_buckets_of_a_second_are_kept_as_long_as_ten_second_ones_that_start_there() -> None:
    """Buckets are named by their first second: an older monitor's (a second wide) read back are merged once
    the clock is past where a bucket of this width would end, and forgotten two label windows after that."""
    window = 1_000
    old = [
        (1001, 0, encode_hashes(decode_hashes({"ids": ["a"]}))),
        (1001, 1, encode_hashes(decode_hashes({"ids": ["b"]}))),
    ]
    store = DictStore()
    for record in old:
        store.put_markers(*record)
    j = Joiner(store, window)
    j.rebuild([], store.marker_records())
    assert request_hash("a") in j.markers and request_hash("b") in j.markers

    def clock(ms: int) -> None:
        rid = f"r{ms}"
        j.prediction({"kind": "prediction", "request_id": rid, "ts": ms, "version": "v", "candidates": ["a"],
                      "recommended": ["a"]})  # fmt: skip
        j.outcome({"kind": "outcome", "request_id": rid, "ts": ms, "purchased": ["a"]})
        j.sync()

    clock(1_010_999)  # past the old bucket's own second, not past where a ten-second one would end
    assert {(1001, 0), (1001, 1)} <= set(store.markers)
    clock(1_011_000)
    assert [c for b, c in store.markers if b == 1001] == [2]  # merged, once
    clock((1001 + MARKER_BUCKET_S) * 1000 + 2 * window)
    assert request_hash("a") in j.markers
    clock((1001 + MARKER_BUCKET_S) * 1000 + 2 * window + 1)
    assert request_hash("a") not in j.markers and not [b for b, _ in store.markers if b == 1001]
    # This monitor's own buckets start at multiples of the width.
    assert {b for b, _ in store.markers} <= {b for b in range(1000, 1100, MARKER_BUCKET_S)}


def test_a_closed_bucket_past_the_message_limit_is_merged_into_several_chunks() -> None:
    markers = Markers()
    n = 2 * MERGED_MARKERS + 5
    for i in range(n):
        markers.mark(request_hash(f"req-{i}"), 7)
        if i % 1000 == 999:
            markers.unwritten()
    written = markers.unwritten()
    [(bucket, merged, replaced)] = markers.merge_closed(8)
    assert bucket == 7 and len(merged) == 3 and len(replaced) == n // 1000 + 1 > len(written)
    assert all(len(value) <= 300_000 for _, value in merged)  # under Kafka's message limit, as JSON too
    assert sum(len(decode_hashes(v)) for _, v in merged) == n
    restored = Markers.load([(bucket, chunk, value) for chunk, value in merged])
    assert len(restored) == n and restored.merge_closed(8) == []  # as few chunks as it needs: not again
