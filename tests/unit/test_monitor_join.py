"""The join of predictions with outcomes: either order, label window in event time, watermarks per source
partition, idle partitions, implausible timestamps, duplicates, restarts."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.metrics import request_counts
from streams import join
from streams.join import (
    HEAP_SLACK,
    MARKER_BUCKET_S,
    SHADOW,
    Joiner,
    Labelled,
    joinable_outcome,
    joinable_prediction,
)
from streams.join_store import DictStore
from streams.watermarks import Clocks

W = 1000  # label window, ms


def contract_prediction(rid: str, ts: int, version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "user_id": "u-1",
        "model_version": version,
        "scores": {"a": 0.9, "b": 0.5, "c": 0.1},
        "recommended": ["a", "b"],
        "instance": "s1",
        "ts": ts,
        **extra,
    }


def prediction(rid: str, ts: int, version: str = "v1", source: int = 0) -> dict[str, Any]:
    """A joinable prediction whose event time is ``ts`` (its request_ts)."""
    return joinable_prediction(contract_prediction(rid, ts + 7, version, request_ts=ts), source)


def outcome(rid: str, ts: int, bought: list[str] | None = None, source: int = 0) -> dict[str, Any]:
    o = {"request_id": rid, "purchased": ["a"] if bought is None else bought, "ts": ts}
    return joinable_outcome(o, source)


BOUGHT_A = request_counts(["a", "b", "c"], ["a", "b"], ["a"])
NOTHING = request_counts(["a", "b", "c"], ["a", "b"], [])


def test_prediction_then_outcome() -> None:
    j = Joiner(DictStore(), W)
    assert j.prediction(prediction("r1", 100)) == []
    assert j.outcome(outcome("r1", 300)) == [Labelled("r1", "v1", 100, BOUGHT_A)]
    assert j.stats.joined == 1 and j.stats.outcome_first == 0


def test_outcome_then_prediction() -> None:
    j = Joiner(DictStore(), W)
    assert j.outcome(outcome("r1", 300)) == []
    assert j.prediction(prediction("r1", 100)) == [Labelled("r1", "v1", 100, BOUGHT_A)]
    assert j.stats.outcome_first == 1


def test_a_prediction_expires_when_the_outcome_stream_passes_its_window() -> None:
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    assert j.outcome(outcome("other", 1100)) == []  # exactly at ts + W: still open
    assert j.outcome(outcome("other2", 1101)) == [Labelled("r1", "v1", 100, NOTHING, expired=True)]
    assert j.stats.expired == 1
    assert j.outcome(outcome("r1", 1050)) == []  # too late: it finds the marker
    assert j.stats.duplicates == 1


def test_predictions_alone_never_expire_anything() -> None:
    """Only the outcome clock closes label windows: a lagging outcome consumer loses no labels."""
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    for i in range(50):
        assert j.prediction(prediction(f"p{i}", 200 + 1000 * i)) == []
    assert j.outcome(outcome("r1", 400)) == [Labelled("r1", "v1", 100, BOUGHT_A)]


def test_expired_predictions_can_be_dropped_and_are_still_reported() -> None:
    j = Joiner(DictStore(), W, unlabelled="drop")
    j.prediction(prediction("r1", 100))
    assert j.outcome(outcome("x", 5000)) == [Labelled("r1", "v1", 100, None, expired=True)]


def test_an_outcome_beyond_the_window_does_not_label() -> None:
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    assert j.outcome(outcome("r1", 1101)) == [Labelled("r1", "v1", 100, NOTHING, expired=True)]
    j2 = Joiner(DictStore(), W)
    j2.outcome(outcome("r2", 1101))
    assert j2.prediction(prediction("r2", 100)) == [Labelled("r2", "v1", 100, NOTHING, expired=True)]


def test_a_prediction_after_its_window_closed_is_expired_on_arrival() -> None:
    j = Joiner(DictStore(), W)
    j.outcome(outcome("x", 1500))
    assert j.prediction(prediction("r1", 100)) == [Labelled("r1", "v1", 100, NOTHING, expired=True)]


def test_duplicates_are_ignored() -> None:
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    assert j.prediction(prediction("r1", 100)) == []
    assert len(j.outcome(outcome("r1", 200))) == 1
    assert j.outcome(outcome("r1", 200)) == []
    assert j.prediction(prediction("r1", 100)) == []
    j.outcome(outcome("o2", 250))
    assert j.outcome(outcome("o2", 250)) == []
    assert j.stats.duplicates == 4


def test_markers_are_forgotten_two_windows_on_and_a_replay_after_that_is_expired_again() -> None:
    """(The version's windows recognise such a replay by its request id: streams/tracker.py.)"""
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    j.outcome(outcome("r1", 200))
    later = MARKER_BUCKET_S * 1000 + 2 * W + 1  # the marker's bucket ends at 10 s
    j.prediction(prediction("p", later - 1))
    j.outcome(outcome("o", later - 1))
    j.sync()
    store = j.store
    assert isinstance(store, DictStore) and store.markers  # not yet: one ms short
    j.prediction(prediction("p2", later))
    j.outcome(outcome("o2", later))  # both clocks two windows past the bucket's end: the marker is gone
    j.sync()
    assert store.get("r1") is None and not [b for b, _ in store.markers if b == 0]
    assert j.prediction(prediction("r1", 100)) == [Labelled("r1", "v1", 100, NOTHING, expired=True)]


def test_an_outcome_waits_for_its_prediction_whatever_the_prediction_clock_says() -> None:
    j = Joiner(DictStore(), W, prediction_wait_ms=5000)
    j.outcome(outcome("r1", 100))
    j.prediction(prediction("p", 4200))  # predictions come out of order after an outage: no promise
    assert j.store.get("r1") is not None
    j.outcome(outcome("x", 5100))
    assert j.store.get("r1") is not None
    j.outcome(outcome("y", 5101))  # the outcome clock is prediction_wait past it: given up
    assert j.store.get("r1") is None and j.stats.orphan_outcomes == 1


def test_a_backlog_served_in_any_order_joins_the_outcomes_that_came_during_the_outage() -> None:
    """Replicas catching up serve each request partition's backlog at their own pace: the prediction
    stream comes out of event-time order by the length of the outage."""
    rng = random.Random(3)
    j = Joiner(DictStore(), W)
    j.prediction(prediction("before", 0))
    for i in range(1, 600):
        j.outcome(outcome(f"r{i}", 100 * i + 300))
    backlog = [prediction(f"r{i}", 100 * i) for i in range(1, 600)]
    rng.shuffle(backlog)
    got = [x for p in backlog for x in j.prediction(p)]
    assert len(got) == 599 and not any(x.expired for x in got)


def test_a_restarted_joiner_resumes_from_its_store() -> None:
    store = DictStore()
    j = Joiner(store, W)
    j.prediction(prediction("r1", 100))
    j.prediction(prediction("r2", 150))
    j.outcome(outcome("r2", 160))
    j.sync()  # once per batch, in the worker
    clocks = j.clocks
    restarted = Joiner(store, W, clocks=clocks)
    restarted.rebuild(store.items(), store.marker_records())
    assert restarted.outcome(outcome("r2", 160)) == []  # redelivered after the crash: a duplicate
    assert restarted.outcome(outcome("x", 2000)) == [Labelled("r1", "v1", 100, NOTHING, expired=True)]


def test_labelled_round_trips() -> None:
    for item in (Labelled("r", "v", 5, BOUGHT_A), Labelled("r", "v", 5, None, expired=True)):
        assert Labelled.decode(item.encode()) == item


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_the_result_does_not_depend_on_how_the_two_topics_interleave(seed: int) -> None:
    """Each topic is in event-time order on its partition; the consumer may read either ahead."""
    rng = random.Random(seed)
    preds, outs = [], []
    expected: dict[str, Labelled] = {}
    for i in range(40):
        rid, ts = f"r{i}", 1000 + 100 * i
        preds.append(prediction(rid, ts))
        kind = rng.choice(["on time", "on time", "late", "never"])
        ots = ts + rng.randint(0, W) if kind == "on time" else ts + W + rng.randint(1, 500)
        if kind != "never":
            outs.append(outcome(rid, ots))
        expired = kind != "on time"
        expected[rid] = Labelled(rid, "v1", ts, NOTHING if expired else BOUGHT_A, expired=expired)
    outs.sort(key=lambda o: o["ts"])
    outs.append(outcome("tick", 10**6))  # closes every window
    j = Joiner(DictStore(), W)
    got: list[Labelled] = []
    ahead = rng.choice([0.02, 0.5, 0.98])  # how far the prediction consumer tends to run ahead
    while preds or outs:
        if preds and (not outs or rng.random() < ahead):
            got += j.prediction(preds.pop(0))
        else:
            got += j.outcome(outs.pop(0))
    assert {x.request_id: x for x in got} == expected
    assert len(got) == len(expected)


def test_a_prediction_joins_on_its_request_ts_or_without_one_on_its_ts() -> None:
    j = Joiner(DictStore(), W)
    late_replica = contract_prediction("r1", 50_000, request_ts=100)  # served 50 s after the request
    assert j.prediction(joinable_prediction(late_replica)) == []
    assert j.outcome(outcome("r1", 900)) == [Labelled("r1", "v1", 100, BOUGHT_A)]
    old_producer = contract_prediction("r2", 2000)
    assert j.prediction(joinable_prediction(old_producer)) == []
    assert j.outcome(outcome("r2", 2500)) == [Labelled("r2", "v1", 2000, BOUGHT_A)]


def test_a_partition_read_behind_the_others_holds_the_watermark_back() -> None:
    j = Joiner(DictStore(), W)
    j.report("outcomes", 0, -1, False, partitions=2)
    j.prediction(prediction("r1", 100))
    assert j.outcome(outcome("x", 50_000, source=0)) == []  # partition 1 may still hold r1's outcome
    assert j.outcome(outcome("r1", 400, source=1)) == [Labelled("r1", "v1", 100, BOUGHT_A)]
    j.prediction(prediction("r2", 200))
    assert j.outcome(outcome("y", 1300, source=1)) == [Labelled("r2", "v1", 200, NOTHING, expired=True)]


def test_a_fresh_joiners_first_bundle_cannot_move_a_watermark_with_one_far_future_timestamp() -> None:
    """A joiner that has not heard how many partitions a stream has learns it from the bundle before its
    events: otherwise the sources of the first events would be all it knows, and one outcome far ahead
    (plausible, within the future tolerance) would move the outcome watermark for good and expire every
    pending prediction as "no purchase" (a healthy model's labels lost, a rollback risked)."""
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100, source=0))
    ahead = outcome("x", 240_000, source=1)
    reports = [
        {"stream": "outcomes", "partition": 1, "latest": 240_000, "idle": False, "partitions": 3, "now": -1},
        {"stream": "predictions", "partition": 0, "latest": 100, "idle": False, "partitions": 3, "now": -1},
    ]
    assert j.bundle([ahead], reports) == []
    assert j.clocks.outcomes.watermark == -1  # partitions 0 and 2 not heard of: they may hold anything
    assert j.bundle([outcome("r1", 400, source=0)], []) == [Labelled("r1", "v1", 100, BOUGHT_A)]


def test_an_idle_outcome_partition_stops_holding_the_watermark_back() -> None:
    j = Joiner(DictStore(), W)
    j.report("outcomes", 1, -1, False, partitions=2)
    j.prediction(prediction("r1", 100))
    assert j.outcome(outcome("x", 5000, source=0)) == []
    assert j.report("outcomes", 1, -1, True, partitions=2) == [
        Labelled("r1", "v1", 100, NOTHING, expired=True)
    ]


def test_with_every_outcome_partition_idle_predictions_expire_and_pending_stays_bounded() -> None:
    """No outcome comes at all: the monitor's clock, less the past tolerance (no plausible outcome can
    still come from before it), closes the windows."""
    past = 3000
    j = Joiner(DictStore(), W, past_tolerance_ms=past)
    expired: list[Labelled] = []
    for i in range(2000):
        expired += j.prediction(prediction(f"r{i}", 10 * i))
        # the router's report, once per prediction here: every outcome partition idle, its clock at 10 i
        expired += j.report("outcomes", 0, -1, True, partitions=1, now_ms=10 * i)
        assert j.pending() <= (W + past) // 10 + 2
    # Each expired once the clock was the label window plus the past tolerance beyond it, in order.
    assert [x.request_id for x in expired] == [f"r{i}" for i in range(len(expired))]
    assert len(expired) == 2000 - (W + past) // 10 - 1 and all(x.expired for x in expired)
    assert j.report("outcomes", 0, -1, True, partitions=1, now_ms=10**6) != []  # and the rest, later


def test_predictions_served_long_after_their_outcomes_still_join() -> None:
    """A serving outage: the storefront goes on (outcomes flow), predictions come an hour late."""
    hour = 3_600_000
    j = Joiner(DictStore(), W)
    j.prediction(prediction("before", 0))
    j.outcome(outcome("before", 10))
    j.report("predictions", 0, 0, True, partitions=1)  # the replicas are down: no prediction comes
    for i in range(1, 3600):
        assert j.outcome(outcome(f"r{i}", 1000 * i + 200)) == []
    assert j.stats.orphan_outcomes == 0
    got = [x for i in range(1, 3600) for x in j.prediction(prediction(f"r{i}", 1000 * i))]
    assert len(got) == 3599 and not any(x.expired for x in got)
    assert j.clocks.outcomes.watermark > hour - W


def test_an_outcome_waits_for_its_prediction_at_most_prediction_wait() -> None:
    j = Joiner(DictStore(), W, prediction_wait_ms=10_000)
    j.report("predictions", 0, -1, True, partitions=1)
    j.outcome(outcome("r1", 100))
    j.outcome(outcome("x", 10_100))
    assert j.store.get("r1") is not None
    j.outcome(outcome("y", 10_101))
    assert j.store.get("r1") is None and j.stats.orphan_outcomes == 1


def test_watermarks_survive_a_restart() -> None:
    store = DictStore()
    j = Joiner(store, W)
    j.report("outcomes", 1, 700, True, partitions=2)
    j.prediction(prediction("r1", 100, source=2))
    j.outcome(outcome("o", 900, source=0))
    clocks = Clocks.from_dict(orjson.loads(orjson.dumps(j.clocks.as_dict())))
    assert clocks == j.clocks
    restarted = Joiner(store, W, clocks=clocks)
    restarted.rebuild(store.items(), store.marker_records())
    assert restarted.outcome(outcome("o2", 1200, source=0)) == [
        Labelled("r1", "v1", 100, NOTHING, expired=True)
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_labels_do_not_depend_on_arrival_order_across_partitions(seed: int) -> None:
    """Predictions and outcomes on three source partitions each, read at different speeds; outcomes out
    of order within the allowance, never sorted: every label is what the request's own outcome says."""
    rng = random.Random(seed)
    disorder = 300
    queues: dict[tuple[str, int], list[tuple[float, dict[str, Any]]]] = {}
    expected: dict[str, Labelled] = {}
    for i in range(60):
        rid, ts = f"r{i}", 1000 + 50 * i + rng.randint(0, 40)
        p_src, o_src = rng.randrange(3), rng.randrange(3)
        queues.setdefault(("p", p_src), []).append((ts, prediction(rid, ts, source=p_src)))
        kind = rng.choice(["on time", "on time", "late", "never"])
        ots = ts + rng.randint(0, W) if kind == "on time" else ts + W + rng.randint(1, 500)
        if kind != "never":
            # Arrival within a partition: event time plus up to `disorder` of jitter.
            queues.setdefault(("o", o_src), []).append(
                (ots + rng.uniform(0, disorder), outcome(rid, ots, source=o_src))
            )
        expired = kind != "on time"
        expected[rid] = Labelled(rid, "v1", ts, NOTHING if expired else BOUGHT_A, expired=expired)
    for src in range(3):  # one last event per partition, far ahead: closes every window
        queues.setdefault(("p", src), []).append((10**6, prediction(f"pt{src}", 10**5, source=src)))
        queues.setdefault(("o", src), []).append((10**6, outcome(f"ot{src}", 10**5, source=src)))
    order = {key: [e for _, e in sorted(q, key=lambda x: x[0])] for key, q in queues.items()}
    speed = {key: rng.choice([0.05, 1.0, 5.0]) for key in order}
    j = Joiner(DictStore(), W, out_of_order_ms=disorder)
    j.report("predictions", 0, -1, False, partitions=3)
    j.report("outcomes", 0, -1, False, partitions=3)
    got: list[Labelled] = []
    while any(order.values()):
        live = [k for k, q in order.items() if q]
        key = rng.choices(live, weights=[speed[k] for k in live])[0]
        got += j.event(order[key].pop(0))
    got = [x for x in got if not x.request_id.startswith("pt")]
    assert {x.request_id: x for x in got} == expected
    assert len(got) == len(expected)


def test_pending_state_written_by_an_older_monitor_is_read() -> None:
    """Single-letter records and one clock per stream, as monitors before the watermarks wrote them."""
    from streams.tables import load_join_state

    old = {
        "r:0:r1": {"k": "p", "ts": 100, "v": "v1", "c": ["a", "b", "c"], "r": ["a", "b"]},
        "r:0:r2": {"k": "o", "ts": 150, "b": ["a"]},
        "c:0": {"predictions": 100, "outcomes": 150},
        "m:0:0": {"ids": ["r0"]},
    }
    entries, markers, clocks = load_join_state(old)[0]
    j = Joiner(DictStore(), W, clocks=clocks)
    for rid, entry in entries:
        j.store.put(rid, entry)
    j.rebuild(entries, markers)
    assert j.outcome(outcome("r1", 300)) == [Labelled("r1", "v1", 100, BOUGHT_A)]
    assert j.prediction(prediction("r2", 120)) == [Labelled("r2", "v1", 120, BOUGHT_A)]
    assert j.prediction(prediction("r0", 50)) == []  # its marker survived


LONG = 600_000  # a 10-minute label window, ms


def _long_window_traffic(joiner: Joiner, start: int, stop: int) -> list[Labelled]:
    """Requests ``start`` to ``stop``, 10 ms apart, under a long label window: most outcomes 5 ms after
    their prediction, some first, some never (expired when the window closes), some shadowed."""
    got: list[Labelled] = []
    for i in range(start, stop):
        rid, ts = f"r{i}", 10 * i
        kind = random.Random(i).choice(["joined"] * 6 + ["outcome first", "never", "shadowed"])
        if kind == "outcome first":
            got += joiner.outcome(outcome(rid, ts + 5))
        if kind == "shadowed":
            shadow = joinable_prediction(contract_prediction(rid, ts, "v2", request_ts=ts), 0, kind=SHADOW)
            got += joiner.event(shadow)
        got += joiner.prediction(prediction(rid, ts))
        if kind in ("joined", "shadowed"):
            got += joiner.outcome(outcome(rid, ts + 5))
    return got


def test_joined_requests_leave_no_heap_entries_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request joined within milliseconds under a long label window no longer keeps its expiry heap
    entry until the window closes (the monitor's memory grew by 3 MB a minute at 300 requests/s): the
    heaps stay within three entries per pending request plus HEAP_SLACK, and every label, expiry and
    shadow pair is the same as without the compaction."""
    n = 4 * HEAP_SLACK
    compacting = Joiner(DictStore(), LONG)
    got: list[Labelled] = []
    most = 0
    for start in range(0, n, 500):
        got += _long_window_traffic(compacting, start, min(n, start + 500))
        assert compacting.pending() <= 3 * len(compacting.store) + HEAP_SLACK + 2 * 500
        most = max(most, compacting.pending())
    assert most < n // 2  # without the compaction: about one entry per request
    got += compacting.outcome(outcome("end", 10 * n + 2 * LONG))  # closes every window

    monkeypatch.setattr(join, "HEAP_SLACK", 10**9)  # never compacted
    plain = Joiner(DictStore(), LONG)
    expected = _long_window_traffic(plain, 0, n)
    assert plain.pending() >= n
    expected += plain.outcome(outcome("end", 10 * n + 2 * LONG))
    assert got == expected and compacting.take_paired() == plain.take_paired()
    assert sum(x.expired for x in got) > 100 and compacting.stats.paired > 100
