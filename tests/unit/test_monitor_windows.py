"""Every metrics event of a version's windows equals scikit-learn on the same window, request by request."""

from __future__ import annotations

import random
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from schemas.metrics import Counts, request_counts
from streams.join import Labelled
from streams.tracker import TrackerConfig, VersionTracker
from streams.windows import CountWindow, Entry, TimeWindow


def sklearn(y_true: list[int], y_pred: list[int]) -> dict[str, float | None]:
    if not y_true:
        return dict.fromkeys(("accuracy", "precision", "recall", "f1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        values = {
            "accuracy": accuracy_score(y_true, y_pred),
            "precision": precision_score(y_true, y_pred, zero_division=np.nan),
            "recall": recall_score(y_true, y_pred, zero_division=np.nan),
            "f1": f1_score(y_true, y_pred, zero_division=np.nan),
        }
    return {k: None if np.isnan(v) else float(v) for k, v in values.items()}


# One request: per candidate, (recommended, bought).
request = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6)


def labelled(i: int, ts: int, items: list[tuple[bool, bool]]) -> Labelled:
    return Labelled(f"r{i}", "v1", ts, request_counts(*_split(items)))


def _split(items: list[tuple[bool, bool]]) -> tuple[list[str], list[str], list[str]]:
    names = [f"i{j}" for j in range(len(items))]
    rec = [n for n, (r, _) in zip(names, items, strict=True) if r]
    bought = [n for n, (_, b) in zip(names, items, strict=True) if b]
    return names, rec, bought


def labels(items: list[tuple[bool, bool]]) -> tuple[list[int], list[int]]:
    return [int(b) for _, b in items], [int(r) for r, _ in items]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(request, st.integers(-3000, 3000)), min_size=1, max_size=80),
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(1, 7),
)
def test_every_emission_matches_sklearn(
    stream: list[tuple[list[tuple[bool, bool]], int]], count_window: int, time_window_s: int, every: int
) -> None:
    """Out-of-order event times included: the time window holds ts in (max_ts - T, max_ts]."""
    tracker = VersionTracker("v1", TrackerConfig(count_window, time_window_s, every))
    seen: list[tuple[int, list[tuple[bool, bool]]]] = []
    ts = 1_000_000
    emissions = 0
    for i, (items, jitter) in enumerate(stream):
        ts += 400  # requests 0.4 s apart, each off by up to 3 s: event time runs out of order
        seen.append((ts + jitter, items))
        emission = tracker.add(labelled(i, ts + jitter, items), offset=i)
        if emission is None:
            continue
        emissions += 1
        latest = max(t for t, _ in seen)
        windows = {
            "count": seen[-count_window:],
            "time": [(t, r) for t, r in seen if t > latest - time_window_s * 1000],
        }
        for event in emission.metrics:
            window = windows[event["window"]["kind"]]
            y_true = [y for _, r in window for y in labels(r)[0]]
            y_pred = [y for _, r in window for y in labels(r)[1]]
            assert event["n"] == len(window)
            assert event["total"] == len(seen)
            for name, value in sklearn(y_true, y_pred).items():
                assert event[name] == value, (name, event)
    assert emissions == len(stream) // every


def test_count_window_rolls_exactly() -> None:
    rng = random.Random(3)
    window = CountWindow(5)
    entries = []
    for seq in range(1, 40):
        items = [(rng.random() < 0.3, rng.random() < 0.2) for _ in range(8)]
        entry = Entry(seq, seq, seq, request_counts(*_split(items)))
        entries.append(entry)
        pushed = window.add(entry)
        assert pushed == (entries[-6] if seq > 5 else None)
        expected = sum((e.counts for e in entries[-5:]), start=Counts())
        assert window.counts == expected


def test_time_window_refuses_requests_older_than_the_window() -> None:
    window = TimeWindow(2)
    counts = request_counts(["a"], ["a"], ["a"])
    assert window.add(Entry(1, 10_000, 11, counts))
    assert window.add(Entry(2, 13_000, 12, counts)) and len(window) == 1  # the first left
    entered = window.add(Entry(3, 11_000, 13, counts))  # at the cutoff (13 s - 2 s): outside
    assert (entered, len(window)) == (False, 1)
    assert window.add(Entry(4, 11_001, 14, counts)) and len(window) == 2
    assert window.oldest_seq() == 2
    assert window.counts == counts + counts


def test_each_window_says_how_many_of_its_requests_were_labelled_and_how_many_expired() -> None:
    bought, nothing = Counts(1, 1, 0, 1), Counts(0, 2, 0, 1)
    tracker = VersionTracker("v", TrackerConfig(count_window=4, time_window_s=1, emit_every_n=1000))
    for i, expired in enumerate([True, False, True, False, False, False]):
        tracker.add(Labelled(f"r{i}", "v", 400 * i, nothing if expired else bought, expired=expired))
    count, time_ = tracker.snapshot("count"), tracker.snapshot("time")
    assert (count["n"], count["labelled"], count["expired_in_window"]) == (4, 3, 1)  # r2..r5
    assert (time_["n"], time_["labelled"], time_["expired_in_window"]) == (
        3,
        3,
        0,
    )  # r3..r5: ts > 2000 - 1000
    restored = VersionTracker.restore("v", [v for _, v in tracker.changes() if v], tracker.config)
    assert restored.snapshot("count")["expired_in_window"] == 1
