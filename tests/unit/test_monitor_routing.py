"""The join's routing step: plausible event times, the repartition by request_id, the source reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from confluent_kafka import Message

from schemas import codec
from schemas.eventtime import implausible
from streams.join import Joiner
from streams.join_store import DictStore
from streams.routing import Router, decode_bundle, partition_of
from streams.watch_agents import WatchAgents

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


def test_a_quiet_partition_with_unread_backlog_is_not_idle() -> None:
    """Quiet is not caught up: a slow consumer or a stalled fetch leaves a partition quiet with messages
    unread. Idle needs the offset read to be at the high watermark the consumer knows."""
    now, highwaters = [100.0], {("outcomes", 2): 9}
    r = router(idle_timeout_s=60)
    r.clock = lambda: now[0]
    r.highwater = lambda stream, partition: highwaters.get((stream, partition))
    r.route("outcomes", 2, 3, NOW, outcome("x", NOW), offset=4)
    now[0] += 61
    assert [s["idle"] for s in r.reports()] == [False]  # offsets 5..8 are still to be read
    r.route("outcomes", 2, 3, NOW, outcome("y", NOW), offset=8)
    assert [s["idle"] for s in r.reports()] == [False]  # read to the end, but not quiet yet
    now[0] += 61
    assert [s["idle"] for s in r.reports()] == [True]  # caught up and quiet
    highwaters[("outcomes", 2)] = 10  # a message came that the worker has not read
    assert [s["idle"] for s in r.reports()] == [False]
    del highwaters[("outcomes", 2)]  # the consumer does not know the end: not caught up
    assert [s["idle"] for s in r.reports()] == [False]


def test_a_partition_read_to_its_end_before_a_restart_can_be_idle_without_new_messages() -> None:
    """Nothing read since the assignment: the consumer's position (its committed offset) says how far it is
    read; until the router is told, the partition is not idle."""
    now, highwaters = [100.0], {("predictions", 0): 7, ("predictions", 1): 7}
    r = router(idle_timeout_s=60)
    r.clock = lambda: now[0]
    r.highwater = lambda stream, partition: highwaters.get((stream, partition))
    r.assign("predictions", 0, 2)
    r.assign("predictions", 1, 2)
    now[0] += 61
    assert [s["idle"] for s in r.reports()] == [False, False]
    r.started("predictions", 0, 7)  # committed at the end
    r.started("predictions", 1, 3)  # four messages to read
    assert [s["idle"] for s in r.reports()] == [True, False]


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


# -- the fast read of a prediction (streams.prediction_check) ------------------------------------------------


def test_the_fast_read_of_a_prediction_enforces_exactly_the_contract() -> None:
    from schemas import load_schema
    from services.serving.request_check import FastCheck
    from streams.prediction_check import Prediction

    optional = ("request_ts", "latency_ms", "model")
    check = FastCheck(Prediction, optional, unique=("recommended",), wide_ints=("ts", "request_ts"))
    assert check.differences(load_schema("prediction")) == []


def both_reads(read: Callable[[bytes], Any], schema: str, good: dict, change: dict) -> tuple[Any, Any]:
    """``good`` with ``change`` (a field changed to ``None`` is left out; ``pad`` adds trailing whitespace)
    read by the fast path ``read`` and by the codec: (its result, the codec's event or ``None``)."""
    from schemas.errors import ContractError

    event = {**good, **change}
    for name, new in change.items():
        if new is None:
            del event[name]
    pad = event.pop("pad", 0)
    value = json.dumps(event).encode() + b" " * pad  # orjson cannot write 2**64
    try:
        decoded = codec(schema).decode(value)
    except ContractError:
        decoded = None
    return read(value), decoded


GOOD = {"request_id": "r1", "user_id": "u", "model_version": "v1", "scores": {"a": 0.5, "b": 1, "c": 0},
        "recommended": ["a", "c"], "instance": "s", "ts": NOW, "request_ts": NOW - 5, "latency_ms": 1.5,
        "model": "home"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "codec_accepts"),
    [
        ({}, True),
        ({"request_ts": None}, True),  # absent: an older producer's
        ({"extra": "a field the contract does not name"}, True),  # left to the codec, which takes it
        ({"ts": 1.0}, True),  # an integer to JSON Schema, not to msgspec: the codec's to take
        ({"request_id": ""}, False),
        ({"scores": {"a": 1.5}}, False),
        ({"scores": {"a": -0.1}}, False),
        ({"scores": {str(i): 0.1 for i in range(1001)}}, False),
        ({"recommended": ["a", "a"]}, False),
        ({"ts": -1}, False),
        ({"ts": 2**64}, True),  # past 64 bits orjson reads a float, an integer to the codec: its to judge
        ({"request_ts": "soon"}, False),
        ({"model": "no spaces"}, False),
        ({"model": "home\n"}, False),  # a pattern's $ matches before a final newline in Python's re
        ({"pad": 1_000_000}, False),  # whitespace past the codec's message size: JSON, but not taken
        ({"model_version": "v" * 129}, False),
        ({"instance": None}, False),
        ({"latency_ms": -1}, False),
    ],
)
def test_the_fast_read_vouches_only_for_what_the_codec_accepts(change: dict, codec_accepts: bool) -> None:
    from streams.join import joinable_prediction
    from streams.prediction_check import read_prediction

    fast, decoded = both_reads(read_prediction, "prediction", GOOD, change)
    assert (decoded is not None) == codec_accepts
    if fast is not None:  # what it vouches for, the codec accepts, and the join gets the same
        assert decoded is not None
        assert fast.joinable(2, "shadow") == joinable_prediction(decoded, 2, "shadow")
    assert fast is not None or bool(change), "the contract's own prediction takes the fast path"


def test_a_prediction_the_fast_read_leaves_to_the_codec_is_routed_or_rejected_by_it() -> None:
    r = router()
    taken = orjson.dumps({**GOOD, "ts": float(NOW), "request_ts": NOW})
    assert r.route("predictions", 0, 1, NOW, taken) is None
    bad = orjson.dumps({**GOOD, "scores": {"a": 2}})
    rejected = r.route("predictions", 0, 1, NOW, bad)
    assert rejected is not None and "scores" in rejected[0] and rejected[1] == "invalid"
    assert [e["request_id"] for e in r.take()] == ["r1"]


# -- the fast read of an outcome (streams.outcome_check) ----------------------------------------------------


def test_the_fast_read_of_an_outcome_enforces_exactly_the_contract() -> None:
    from schemas import load_schema
    from services.serving.request_check import FastCheck
    from streams.outcome_check import Outcome

    check = FastCheck(Outcome, ("model",), unique=("purchased",), wide_ints=("ts",))
    assert check.differences(load_schema("outcome")) == []


OUTCOME_EVENT = {"request_id": "r1", "purchased": ["a", "c"], "ts": NOW, "model": "home"}


@pytest.mark.parametrize(
    ("change", "codec_accepts"),
    [
        ({}, True),
        ({"model": None}, True),  # absent: the storefront does not know it
        ({"purchased": []}, True),
        ({"extra": "a field the contract does not name"}, True),  # allowed: left to the codec, which takes it
        ({"ts": 1.0}, True),  # an integer to JSON Schema, not to msgspec: the codec's to take
        ({"ts": 2**64}, True),  # past 64 bits orjson reads a float, an integer to the codec: its to judge
        ({"request_id": ""}, False),
        ({"request_id": None}, False),
        ({"purchased": ["a", "a"]}, False),
        ({"purchased": [""]}, False),
        ({"purchased": [str(i) for i in range(1001)]}, False),
        ({"purchased": "a"}, False),
        ({"ts": -1}, False),
        ({"ts": "soon"}, False),
        ({"model": "no spaces"}, False),
        ({"model": "home\n"}, False),  # a pattern's $ matches before a final newline in Python's re
        ({"pad": 1_000_000}, False),  # whitespace past the codec's message size: JSON, but not taken
    ],
)
def test_the_fast_read_of_an_outcome_vouches_only_for_what_the_codec_accepts(
    change: dict, codec_accepts: bool
) -> None:
    from streams.join import joinable_outcome
    from streams.outcome_check import read_outcome

    fast, decoded = both_reads(read_outcome, "outcome", OUTCOME_EVENT, change)
    assert (decoded is not None) == codec_accepts
    if fast is not None:  # what it vouches for, the codec accepts, and the join gets the same
        assert decoded is not None
        assert fast.joinable(2) == joinable_outcome(decoded, 2)
        assert (fast.model if isinstance(fast.model, str) else None) == decoded.get("model")
    assert fast is not None or bool(change), "the contract's own outcome takes the fast path"


def test_an_outcome_the_fast_read_leaves_to_the_codec_is_routed_or_rejected_by_it() -> None:
    r = router()
    taken = orjson.dumps({**OUTCOME_EVENT, "ts": float(NOW), "note": "the storefront's own field"})
    assert r.route("outcomes", 0, 1, NOW, taken) is None
    bad = orjson.dumps({**OUTCOME_EVENT, "purchased": ["a", "a"]})
    rejected = r.route("outcomes", 0, 1, NOW, bad)
    assert rejected is not None and "purchased" in rejected[0] and rejected[1] == "invalid"
    assert [e["request_id"] for e in r.take()] == ["r1"]


def test_the_first_dead_letters_the_consumer_passed_over_after_a_rebalance_are_read_first() -> None:
    """Faust's consumer, right after a rebalance, can deliver a partition from past its committed offset
    and commit past the messages in between (streams.offsets). The failures agent compares each dead-letter
    partition's first message with the offset noted at the rebalance and takes what lies between, read
    from the broker, first; later gaps (a transactional producer's markers) are left alone."""
    dlq = "rec.requests.dlq"
    read: list[range] = []

    async def read_missed(topic: str, partition: int, missed: range) -> list[Message]:
        read.append(missed)
        return [Message(topic=topic, partition=partition, offset=at, value=b"{}") for at in missed]

    agents = WatchAgents()
    agents._dead_letter_starts = {(dlq, 0): 10}
    agents._read_missed = read_missed  # type: ignore[method-assign]

    async def first_two() -> list[list[int]]:
        return [
            [cast(int, m.offset()) for m in await agents._passed_over(_source_event(dlq, at, b"{}"))]
            for at in (13, 15)
        ]

    assert asyncio.run(first_two()) == [[10, 11, 12], []]
    assert read == [range(10, 13)]  # before the first message only: 14 is not asked for
    assert agents._dead_letter_starts == {}


async def _nothing(*_: object) -> None:
    return None


def _source_event(topic: str, offset: int, value: bytes) -> Any:
    message = SimpleNamespace(topic=topic, partition=0, offset=offset, timestamp=NOW / 1000)
    return SimpleNamespace(message=message, key=None, value=value)
