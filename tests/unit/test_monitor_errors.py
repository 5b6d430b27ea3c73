"""The error rate: model failures dead-lettered with their version, counted against what was answered,
judged by ``error_rate`` rules (``above``), persisted with the windows."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from pydantic import ValidationError

from schemas import codec
from schemas.metrics import Counts
from services.config import AlertRule
from services.serving.intake import dead_letter
from streams.failures import decode_failures, encode_failures, failure_of, is_failures
from streams.join import Labelled, encode_bundle
from streams.tracker import TrackerConfig, VersionTracker
from streams.windows import ServingWindows

RULE = AlertRule(name="errors", metric="error_rate", above=0.5, min_samples=10, action="rollback")
CONFIG = TrackerConfig(count_window=20, time_window_s=5, emit_every_n=5, rules=(RULE,), dedupe_horizon=50)


def message(value: bytes, offset: int = 7) -> Message:
    return Message(topic="rec.requests", partition=2, offset=offset, key=b"u-1", value=value)


def request(rid: str) -> bytes:
    return orjson.dumps({"request_id": rid, "user_id": "u-1", "items": ["i-1", "i-2"], "ts": 1})


def answered(start: int, n: int) -> list[Labelled]:
    return [Labelled(f"ok-{i}", "v2", 1000 * i, Counts(1, 0, 0, 1)) for i in range(start, start + n)]


def test_a_model_failure_is_dead_lettered_with_the_version_and_read_back_as_a_failure() -> None:
    _key, value = dead_letter(
        message(request("r-7"), offset=4), "model: ValueError: boom", 99, model_version="v2"
    )
    dead = codec("dead-letter").decode(value)
    assert dead["model_version"] == "v2"
    failure = failure_of(value)
    assert failure is not None and (failure.version, failure.request_id, failure.ts) == ("v2", "r-7", 99)
    # Bad input names no version and is not the model's fault; what is not a dead letter is skipped.
    assert failure_of(dead_letter(message(b"{}", offset=5), "prediction-request: ...", 99)[1]) is None
    assert failure_of(b"not json") is None and failure_of(None) is None
    # The model it failed for, when named (a replica serving several models names it; absent: the default).
    assert failure.model is None
    named = dead_letter(
        message(request("r-8"), offset=6), "model: boom", 99, model_version="c2", model="cart"
    )
    assert (failure_of(named[1]) or failure).model == "cart"


def test_failures_travel_the_labelled_stream_as_objects_beside_the_join_s_arrays() -> None:
    failure = failure_of(dead_letter(message(request("r-1")), "model: boom", 5, model_version="v2")[1])
    assert failure is not None
    value = encode_failures("v2", [failure])
    assert is_failures(value) and decode_failures(value) == ("v2", [("r-1", 5)])
    assert not is_failures(encode_bundle(answered(0, 1)))


def test_the_error_rate_over_the_last_n_and_the_last_seconds_with_failures_counted_once() -> None:
    w = ServingWindows(size=4, span_s=2)
    for ts, rid in [(0, None), (500, "f1"), (1000, None), (1500, "f2"), (1600, "f2")]:
        w.add(ts, rid)
    assert w.rate("count") == (0.5, 4) and w.rate("time") == (0.5, 4)
    w.add(2500, "f3")  # the count window drops the first request; the time window second 0
    assert w.rate("count") == (0.75, 4) and w.rate("time") == (2 / 3, 3)
    again = ServingWindows.from_dict(4, 2, orjson.loads(orjson.dumps(w.as_dict())))
    assert again.rate("count") == w.rate("count") and again.rate("time") == w.rate("time")
    assert not again.add(2600, "f3")  # still known after a restore


def test_a_version_that_fails_every_request_fires_its_error_rate_rule_and_resolves_when_it_answers() -> None:
    tracker = VersionTracker("v2", CONFIG)
    tracker.add_failures([(f"r-{i}", 1000 * i) for i in range(9)], offset=0)
    assert tracker.pending_emission()
    assert tracker.emit().alerts == []  # 9 < min_samples
    tracker.add_failures([("r-9", 9000)], offset=1)
    tracker.add_failures([("r-9", 9000)], offset=1)  # the same message again: counted once
    emission = tracker.emit()
    [(_, firing)] = emission.alerts
    assert (firing["state"], firing["value"], firing["n"], firing["direction"]) == (
        "firing",
        1.0,
        10,
        "above",
    )
    assert "above 0.5000" in firing["message"]
    codec("alert").validate(firing)
    assert emission.metrics[0]["error_rate"] == 1.0 and emission.metrics[0]["failed"] == 10
    [summary] = tracker.firing_alerts("rollback")
    assert summary["value"] == 1.0 and summary["direction"] == "above"

    alerts: list[dict[str, Any]] = []
    for e in tracker.add_bundle(answered(10, 15), offset=2):
        alerts += [a for _, a in e.alerts]
    assert [a["state"] for a in alerts] == ["resolved"]  # 5 failed of the last 20: 0.25
    assert tracker.total == 15 and tracker.failed == 10


def test_the_error_rate_survives_a_restore() -> None:
    tracker = VersionTracker("v2", CONFIG)
    tracker.add_bundle(answered(0, 7), offset=0)
    tracker.add_failures([(f"r-{i}", 1000 * i) for i in range(6)], offset=1)
    changelog = {key: value for key, value in tracker.changes() if value is not None}
    restored = VersionTracker.restore("v2", changelog.values(), CONFIG)
    for kind in ("count", "time"):
        assert restored.snapshot(kind) == tracker.snapshot(kind)
    assert restored.failed == 6 and restored.pending_emission()


@pytest.mark.parametrize(
    "fields",
    [
        {"metric": "error_rate", "above": 0.1, "below": 0.2},
        {"metric": "error_rate", "above": 0.1, "resolve_above": 0.2},
        {"metric": "error_rate"},
    ],
)
def test_an_error_rate_rule_takes_one_threshold_and_no_resolve_above(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertRule(name="errors", **fields)
