"""Intake: bad requests become dead letters naming the field and the reason; the fast check never admits
what the contract refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec, load_example
from schemas.codec import MAX_EVENT_BYTES
from schemas.errors import ContractError
from services.serving.intake import PAYLOAD_LIMIT, Decoder, dead_letter, fast_check_applies, well_formed

TOPIC = "rec.requests"


def message(value: bytes | None, offset: int = 7, key: bytes | None = b"u-1") -> Message:
    return Message(topic=TOPIC, partition=2, offset=offset, key=key, value=value)


def request(**changes: Any) -> dict[str, Any]:
    body = {**load_example("prediction-request"), **changes}
    return {k: v for k, v in body.items() if v is not None}


def test_the_fast_check_was_written_for_the_schema_on_disk() -> None:
    # If this fails the request schema changed: review well_formed() and update _SCHEMA_DIGEST.
    assert fast_check_applies()


BAD = [
    (None, "message value is null"),
    (b"\xff\xfe{not utf-8", "not valid UTF-8 JSON"),
    (b"{truncated", "not valid UTF-8 JSON"),
    (b"[1, 2]", "must be object"),
    (orjson.dumps(request(items=[])), "items: must contain at least 1 items"),
    (orjson.dumps(request(items=["i-1", "i-1"])), "items: must contain unique items"),
    (orjson.dumps(request(user_id=None)), "user_id: is required"),
    (orjson.dumps(request(ts="yesterday")), "ts: must be integer"),
    (orjson.dumps(request(k=0)), "k: must be bigger than or equal to 1"),
    (orjson.dumps(request(items=["i-1", 5])), "items[1]: must be string"),
    (orjson.dumps(request(request_id="r" * 129)), "request_id: must be shorter than or equal to 128"),
]


@pytest.mark.parametrize(("value", "reason"), BAD, ids=[r for _v, r in BAD])
def test_a_bad_request_is_dead_lettered_with_the_field_and_reason(value: bytes | None, reason: str) -> None:
    good = orjson.dumps(request(request_id="r-good"))
    intake = Decoder().decode([message(good, offset=1), message(value, offset=2), message(good, offset=3)])
    assert [r["request_id"] for r in intake.requests] == ["r-good", "r-good"]
    assert [m.offset() for m in intake.sources] == [1, 3]
    assert len(intake.dead) == 1
    key, raw = intake.dead[0]
    dead = codec("dead-letter").decode(raw)
    assert reason in dead["error"], dead["error"]
    assert dead["error"].startswith("prediction-request: ")
    assert (key, dead["source_topic"], dead["partition"], dead["offset"]) == (b"u-1", TOPIC, 2, 2)
    assert dead["payload"] == ("" if value is None else value.decode("utf-8", "replace"))


def test_an_oversize_request_is_dead_lettered_with_a_bounded_payload() -> None:
    huge = b'{"request_id": "r-1", "pad": "' + b"x" * MAX_EVENT_BYTES + b'"}'
    intake = Decoder().decode([message(huge)])
    dead = codec("dead-letter").decode(intake.dead[0][1])
    assert f"over {MAX_EVENT_BYTES}" in dead["error"]
    assert len(dead["payload"]) == PAYLOAD_LIMIT and dead["payload_truncated"] is True
    assert dead["payload_bytes"] == len(huge)
    assert len(intake.dead[0][1]) < 2 * PAYLOAD_LIMIT


def test_dead_letter_keeps_a_missing_key_missing() -> None:
    key, raw = dead_letter(message(b"x", key=None), "why", now_ms=5)
    assert key is None and codec("dead-letter").decode(raw)["ts"] == 5


def test_a_valid_request_the_fast_check_doubts_is_still_served() -> None:
    # JSON Schema calls 1.0 an integer; the fast check is stricter and defers to the codec.
    doubted = request(ts=1.0)
    assert not well_formed(doubted)
    intake = Decoder().decode([message(orjson.dumps(doubted))])
    assert len(intake.requests) == 1 and not intake.dead


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | st.text(max_size=140),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
item_ids = st.text(min_size=0, max_size=130)
near_valid = st.fixed_dictionaries(
    {
        "request_id": st.text(max_size=130) | json_values,
        "user_id": st.text(max_size=130) | json_values,
        "items": st.lists(item_ids | json_values, max_size=25) | json_values,
        "ts": st.integers(-3, 2**45) | json_values,
    },
    optional={
        "k": st.integers(-2, 1002) | json_values,
        "context": st.dictionaries(st.text(max_size=3), st.integers(), max_size=70) | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(near_valid, json_values))
def test_the_fast_check_admits_only_what_the_contract_admits(value: Any) -> None:
    if well_formed(value):
        codec("prediction-request").validate(value)


@settings(max_examples=200, deadline=None)
@given(near_valid)
def test_the_fast_check_and_the_codec_agree_on_valid_requests(value: Any) -> None:
    try:
        codec("prediction-request").validate(value)
    except ContractError:
        return
    if all(type(value.get(f)) is int for f in ("ts", *(["k"] if "k" in value else []))):
        assert well_formed(value)
