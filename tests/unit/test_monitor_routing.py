"""The join's routing step: plausible event times, the repartition by request_id, the source reports."""

from __future__ import annotations

import orjson
import pytest

from schemas import codec
from schemas.eventtime import implausible
from streams.join import DictStore, Joiner
from streams.routing import Router, decode_bundle, partition_of

NOW = 1_795_491_753_129  # a broker timestamp, ms
MIN, HOUR, YEAR = 60_000, 3_600_000, 365 * 24 * 3_600_000


def router(partitions: int = 3, idle_timeout_s: float = 60.0) -> Router:
    return Router(partitions, future_ms=5 * MIN, past_ms=HOUR, prediction_past_ms=24 * HOUR,
                  idle_timeout_s=idle_timeout_s)  # fmt: skip


def outcome(rid: str, ts: int) -> bytes:
    return codec("outcome").encode({"request_id": rid, "purchased": [], "ts": ts})


def prediction(rid: str, request_ts: int) -> bytes:
    return codec("prediction").encode(
        {"request_id": rid, "user_id": "u", "model_version": "v1", "scores": {"a": 0.5}, "recommended": ["a"],
         "instance": "s", "ts": NOW, "request_ts": request_ts}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        (NOW * 1000, ["after", "microseconds?"]),
        (NOW // 1000, ["before", "seconds?"]),
        (NOW + 3 * YEAR, ["3 years after", "more than 300.0 s"]),
        (NOW - 5 * YEAR, ["5 years before", "more than 1.0 hours"]),
        (NOW + 6 * MIN, ["360.0 s after"]),
    ],
)
def test_implausible_event_times_are_named_with_the_reason(ts: int, words: list[str]) -> None:
    reason = implausible(ts, NOW, 5 * MIN, HOUR)
    assert reason is not None and reason.startswith(f"ts: {ts} is ")
    for word in words:
        assert word in reason


def test_slack_within_the_tolerances_is_plausible() -> None:
    for ts in (NOW, NOW + 5 * MIN, NOW - HOUR, NOW - 59 * MIN):
        assert implausible(ts, NOW, 5 * MIN, HOUR) is None
    assert implausible(0, None, 5 * MIN, HOUR) is None  # no broker timestamp: nothing to judge by


def test_a_bad_timestamp_is_rejected_and_moves_no_clock() -> None:
    r = router()
    assert r.route("outcomes", 0, 1, NOW, outcome("good", NOW - 1000)) is None
    for bad in (NOW * 1000, NOW // 1000, NOW + 3 * YEAR, NOW - 5 * YEAR):
        rejected = r.route("outcomes", 0, 1, NOW, outcome("bad", bad))
        assert rejected is not None and rejected[1] == "implausible"
        assert rejected[0].startswith(f"outcome: ts: {bad} is ")
    rejected = r.route("predictions", 0, 1, NOW, prediction("p", NOW + YEAR))
    assert rejected is not None and rejected[0].startswith("prediction: request_ts: ")
    assert r.stats.implausible_outcomes == 4 and r.stats.implausible_predictions == 1
    bundles = [decode_bundle(b) for _, b in r.bundles()]
    assert sum(len(events) for events, _ in bundles) == 1
    latest = {(s["stream"], s["partition"]): s["latest"] for s in bundles[0][1]}
    assert latest == {("outcomes", 0): NOW - 1000, ("predictions", 0): -1}


def test_a_prediction_served_hours_late_is_plausible() -> None:
    """Its request_ts is far behind its broker time after a serving outage: up to prediction_wait."""
    r = router()
    assert r.route("predictions", 0, 1, NOW, prediction("p", NOW - 5 * HOUR)) is None


def test_invalid_events_are_rejected_with_the_codecs_reason() -> None:
    r = router()
    rejected = r.route("outcomes", 0, 1, NOW, orjson.dumps({"request_id": "x", "ts": NOW}))
    assert rejected is not None and rejected[1] == "invalid" and "purchased" in rejected[0]


def test_events_go_to_the_partition_of_their_request_id_whatever_partition_they_came_from() -> None:
    r = router(partitions=4)
    for source in range(3):
        for i in range(30):
            r.route("outcomes", source, 3, NOW, outcome(f"r{i}", NOW))
    bundles = dict(r.bundles())
    assert sorted(bundles) == [0, 1, 2, 3]  # every join partition hears the reports
    for destination, data in bundles.items():
        events, reports = decode_bundle(data)
        assert {partition_of(e["request_id"], 4) for e in events} <= {destination}
        assert len(reports) == 3
    assert sum(len(decode_bundle(b)[0]) for b in bundles.values()) == 90
    assert partition_of("r-000001", 6) == partition_of("r-000001", 6)
    assert len({partition_of(f"r{i}", 6) for i in range(100)}) == 6


def test_a_quiet_source_partition_is_reported_idle_after_the_timeout() -> None:
    now = [100.0]
    r = router(idle_timeout_s=60)
    r.clock = lambda: now[0]
    r.assign("outcomes", 2, 3)
    now[0] += 60
    assert [s["idle"] for s in r.reports()] == [False]
    now[0] += 0.5
    assert [s["idle"] for s in r.reports()] == [True]
    r.route("outcomes", 2, 3, NOW, outcome("x", NOW))
    assert [s["idle"] for s in r.reports()] == [False]


def test_one_bad_outcome_cannot_expire_healthy_predictions() -> None:
    """The original failure: an outcome in microseconds advanced the clock and expired everything."""
    r = router(partitions=1)
    j = Joiner(DictStore(), 5000)
    r.route("predictions", 0, 1, NOW, prediction("p1", NOW - 100))
    r.route("outcomes", 0, 1, NOW, outcome("noise", NOW * 1000))
    for _, data in r.bundles():
        events, reports = decode_bundle(data)
        out = [x for e in events for x in j.event(e)]
        for s in reports:
            out += j.report(s["stream"], s["partition"], s["latest"], s["idle"], s["partitions"])
        assert out == []
    assert j.clocks.outcomes.watermark < NOW and j.store.get("p1") is not None


def test_a_monitor_routes_only_its_models_predictions_but_every_one_moves_the_clock() -> None:
    cart = Router(3, future_ms=5 * MIN, past_ms=HOUR, prediction_past_ms=24 * HOUR, idle_timeout_s=60.0,
                  model="cart", default_model="home")  # fmt: skip
    named = {rid: orjson.loads(prediction(rid, NOW - 1000 + i)) for i, rid in enumerate(["h", "c", "d"])}
    named["h"]["model"], named["c"]["model"] = "home", "cart"  # "d" names none: the default model, home
    for rid in ("h", "c", "d"):
        assert cart.route("predictions", 0, 1, NOW, codec("prediction").encode(named[rid])) is None
    assert [e["request_id"] for e in cart.take()] == ["c"]
    assert (cart.stats.predictions, cart.stats.other_models) == (1, 2)
    assert cart.sources[("predictions", 0)].latest == NOW - 1000 + 2  # the others' event time counts
    # Outcomes: one naming home goes no further; one naming none may be cart's, and is taken.
    for rid, model in (("o-home", "home"), ("o-cart", "cart"), ("o-none", None)):
        event = {"request_id": rid, "purchased": [], "ts": NOW - 500, **({"model": model} if model else {})}
        assert cart.route("outcomes", 1, 1, NOW, codec("outcome").encode(event)) is None
    assert sorted(e["request_id"] for e in cart.take()) == ["o-cart", "o-none"]
    assert cart.stats.other_models == 3 and cart.sources[("outcomes", 1)].latest == NOW - 500


def test_each_models_monitor_is_its_own_faust_app() -> None:
    from services.config import load_settings
    from streams.app import monitor_app_id

    settings = load_settings(topic_prefix="rec.", model_name="home")
    assert monitor_app_id(settings) == "rec.monitor"  # the default model's, as before
    assert monitor_app_id(settings.for_model("cart")) == "rec.monitor-cart"
