"""The join of predictions with outcomes: either order, label window in event time, duplicates, restarts."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.metrics import request_counts
from streams.join import DictStore, Joiner, Labelled

W = 1000  # label window, ms


def prediction(rid: str, ts: int, version: str = "v1") -> dict[str, Any]:
    return {
        "request_id": rid,
        "user_id": "u-1",
        "model_version": version,
        "scores": {"a": 0.9, "b": 0.5, "c": 0.1},
        "recommended": ["a", "b"],
        "instance": "s1",
        "ts": ts,
    }


def outcome(rid: str, ts: int, bought: list[str] | None = None) -> dict[str, Any]:
    return {"request_id": rid, "purchased": ["a"] if bought is None else bought, "ts": ts}


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


def test_events_older_than_the_markers_are_ignored_as_late() -> None:
    j = Joiner(DictStore(), W)
    j.prediction(prediction("r1", 100))
    j.outcome(outcome("r1", 200))
    j.prediction(prediction("p", 5000))
    j.outcome(outcome("o", 5000))  # both clocks past 100 + 2W: the marker is gone
    j.sync()
    store = j.store
    assert isinstance(store, DictStore) and store.get("r1") is None and not store.markers
    assert j.prediction(prediction("r1", 100)) == []  # may be a replay: not counted again
    assert j.stats.late == 1


def test_an_outcome_without_prediction_is_given_up_when_predictions_pass_it() -> None:
    j = Joiner(DictStore(), W)
    j.outcome(outcome("r1", 100))
    j.prediction(prediction("p", 1200))
    assert j.store.get("r1") is None and j.stats.orphan_outcomes == 1


def test_a_restarted_joiner_resumes_from_its_store() -> None:
    store = DictStore()
    j = Joiner(store, W)
    j.prediction(prediction("r1", 100))
    j.prediction(prediction("r2", 150))
    j.outcome(outcome("r2", 160))
    j.sync()  # once per batch, in the worker
    clocks = j.clocks
    restarted = Joiner(store, W, clocks=clocks)
    restarted.rebuild(store.items(), store.marker_buckets())
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
    outs.append(outcome("tick", 10**9))  # closes every window
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
