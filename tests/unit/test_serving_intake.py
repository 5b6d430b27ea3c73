"""Intake: bad requests become dead letters naming the field and the reason; the fast path is compiled
from the contract, enforces what it says (compared schema to schema) and never admits what the codec
refuses."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import orjson
import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec, load_example, load_schema
from schemas.codec import MAX_EVENT_BYTES
from schemas.errors import ContractError
from services.serving.intake import PAYLOAD_LIMIT, SHIPPED_CHECK, Decoder, dead_letter, fast_decode
from services.serving.request_check import check_for

TOPIC = "rec.requests"


def message(value: bytes | None, offset: int = 7, key: bytes | None = b"u-1") -> Message:
    return Message(topic=TOPIC, partition=2, offset=offset, key=key, value=value)


def request(**changes: Any) -> dict[str, Any]:
    body = {**load_example("prediction-request"), **changes}
    return {k: v for k, v in body.items() if v is not None}


def test_the_fast_path_enforces_exactly_the_contract() -> None:
    # If this fails, the request schema says something services/serving/request_check.py does not compile:
    # teach it the keyword (one line in its tables) rather than dropping the fast path.
    check, off = check_for(load_schema("prediction-request"))
    assert off == [] and check is not None
    assert Decoder().fast_path_off == [] and Decoder().fast is SHIPPED_CHECK


def _changed(change: Any) -> dict[str, Any]:
    contract = load_schema("prediction-request")
    change(contract)
    return contract


MODEL_FIELD = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "^[a-z]+$",
    "description": "a model",
}

#: Changes the compiler follows: the fast path is compiled from the changed contract, with no code change.
FOLLOWED = {
    "a tighter bound": lambda s: s["properties"]["items"].update(maxItems=3),
    "a new optional field": lambda s: s["properties"].update(model=MODEL_FIELD),
    "a new required field": lambda s: s["required"].append("k"),
    "uniqueness dropped": lambda s: s["properties"]["items"].pop("uniqueItems"),
    "a new optional flag": lambda s: s["properties"].update(debug={"type": "boolean"}),
    "a pattern": lambda s: s["properties"]["user_id"].update(pattern="^u-"),
}
#: Changes it cannot check exactly: the fast path turns off and says why.
UNCOMPILABLE = {
    "a format": lambda s: s["properties"]["user_id"].update(format="email"),
    "a type changed": lambda s: s["properties"]["ts"].update(type="number"),
    "extras refused": lambda s: s.update(additionalProperties=False),
    "a nested object": lambda s: s["properties"].update(geo={"type": "object", "properties": {}}),
}


@pytest.mark.parametrize("change", FOLLOWED.values(), ids=list(FOLLOWED))
def test_a_changed_contract_is_compiled_as_it_now_reads(change: Any) -> None:
    contract = _changed(change)
    check, off = check_for(contract)
    assert off == [] and check is not None
    assert set(check.enforced_schema()["properties"]) == set(contract["properties"])


@pytest.mark.parametrize("change", UNCOMPILABLE.values(), ids=list(UNCOMPILABLE))
def test_a_contract_the_fast_path_cannot_check_exactly_turns_it_off(change: Any) -> None:
    contract = _changed(change)
    check, off = check_for(contract)
    assert check is None and off, "the compiler accepted a keyword it does not enforce"
    decoder = Decoder(contract=contract)
    assert decoder.fast is None and decoder.fast_path_off
    intake = decoder.decode([message(orjson.dumps(request()))])  # the codec alone, then
    assert len(intake.requests) == 1 and not intake.dead


def test_a_compiled_check_that_does_not_reproduce_its_contract_is_refused() -> None:
    # The guard behind the compiler: its output is compared with the contract schema to schema.
    check, _ = check_for(load_schema("prediction-request"))
    assert check is not None
    assert check.differences(_changed(lambda s: s["properties"]["k"].update(maximum=5)))


def test_the_enforced_schema_names_every_contract_field() -> None:
    assert SHIPPED_CHECK is not None
    assert set(SHIPPED_CHECK.enforced_schema()["properties"]) == set(
        load_schema("prediction-request")["properties"]
    )


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
    (orjson.dumps(request(model="")), "model: must be longer than or equal to 1"),
    (orjson.dumps(request(model="home feed")), "model: must match pattern"),
    (orjson.dumps(request(model=7)), "model: must be string"),
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


def test_a_valid_request_the_fast_path_doubts_is_still_served() -> None:
    # JSON Schema calls 1.0 an integer; the fast path is stricter and defers to the codec.
    doubted = orjson.dumps(request(ts=1.0))
    assert fast_decode(doubted) is None
    intake = Decoder().decode([message(doubted)])
    assert len(intake.requests) == 1 and not intake.dead


GOOD = orjson.dumps(request())

# What msgspec would let through and the codec refuses, or would read differently: the fast path must
# leave each to the codec. Each case fails if its guard in fast_decode is removed.
LEFT_TO_THE_CODEC = {
    "duplicate candidates": (orjson.dumps(request(items=["i-1", "i-2", "i-1"])), False),
    "invalid UTF-8 in an unknown field": (GOOD[:-1] + b',"x":"\xff"}', False),
    "an infinite number in an unknown field": (GOOD[:-1] + b',"x":1e999}', False),
    "an infinite number in the context": (GOOD.replace(b'"page":"home"', b'"a":1e999'), False),
    "a ts past 64 bits": (orjson.dumps(request(ts=0)).replace(b'"ts":0', b'"ts":18446744073709551616'), True),
    "an unknown field": (orjson.dumps(request(extra={"a": 1})), True),
    "a model name ending in a newline": (orjson.dumps({**orjson.loads(GOOD), "model": "home\n"}), False),
}


@pytest.mark.parametrize(("value", "valid"), LEFT_TO_THE_CODEC.values(), ids=list(LEFT_TO_THE_CODEC))
def test_what_the_fast_path_cannot_vouch_for_goes_to_the_codec(value: bytes, valid: bool) -> None:
    assert fast_decode(value) is None
    intake = Decoder().decode([message(value)])
    assert (len(intake.requests), len(intake.dead)) == ((1, 0) if valid else (0, 1))
    for served in intake.requests:
        orjson.dumps(served)  # the prediction is built from it


def test_a_request_with_a_context_is_read_as_the_codec_reads_it() -> None:
    context = b'"context":{"page":"home","big":1180591620717411303424,"nested":{"x":[1.5,null]}}'
    value = GOOD[:-1] + b"," + context + b"}"
    assert fast_decode(value) == codec("prediction-request").decode(value)


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
        "context": st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1), max_size=70)
        | json_values,
        "extra": json_values,
    },
)
#: Encoded requests, some with bytes spliced in (broken UTF-8, broken JSON, non-standard numbers).
raw_requests = st.one_of(
    st.builds(orjson.dumps, st.one_of(near_valid, json_values)),
    st.builds(
        lambda raw, junk, at: raw[: at % (len(raw) + 1)] + junk + raw[at % (len(raw) + 1) :],
        st.builds(orjson.dumps, near_valid),
        st.sampled_from([b"\xff", b"\xc3", b"1e999", b"NaN", b",", b'"', b"\\ud800", b"}", b" "])
        | st.binary(max_size=4),
        st.integers(0, 10_000),
    ),
)


@settings(max_examples=600, deadline=None)
@given(raw_requests)
def test_the_fast_path_admits_only_what_the_codec_admits_and_reads_it_alike(value: bytes) -> None:
    fast = fast_decode(value)
    if fast is not None:
        assert codec("prediction-request").decode(value) == fast


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_the_fast_path_and_the_codec_agree_on_valid_requests(value: Any) -> None:
    try:
        codec("prediction-request").validate(value)
    except ContractError:
        return
    plain = "extra" not in value and all(
        type(value.get(f)) is int for f in ("ts", *(["k"] if "k" in value else []))
    )
    if plain:
        assert fast_decode(orjson.dumps(value)) == value


@pytest.mark.parametrize("depth", [2_000, 20_000])
def test_json_nested_past_every_parsers_depth_is_dead_lettered_not_fatal(depth: int) -> None:
    """msgspec raises RecursionError (not DecodeError) past its nesting limit: a replica once died of a
    request whose context held 10,000 nested arrays (found by tests/faults/test_hostile_input.py)."""
    deep = b'{"request_id":"r-deep","user_id":"u","items":["i-1"],"ts":1,"context":{"a":' + b"[" * depth
    deep += b"]" * depth + b"}}"
    good = orjson.dumps(request(request_id="r-good"))
    intake = Decoder().decode([message(deep, offset=1), message(good, offset=2)])
    assert [r["request_id"] for r in intake.requests] == ["r-good"]
    assert (
        len(intake.dead) == 1
        and "prediction-request" in codec("dead-letter").decode(intake.dead[0][1])["error"]
    )


def test_the_model_a_request_names_is_read_on_the_fast_path() -> None:
    named = orjson.dumps(request(context=None, model="cart"))
    assert fast_decode(named) == {**request(context=None), "model": "cart"}
    unnamed = orjson.dumps(request(context=None, model=None))
    assert "model" not in (fast_decode(unnamed) or {"model": "?"})  # absent: the default model's


def _reference(contract: dict[str, Any]) -> Any:
    """What the codec does, for any contract: orjson, then the contract compiled by fastjsonschema."""
    validate = fastjsonschema.compile(contract)

    def decode(value: bytes) -> dict[str, Any] | None:
        try:
            parsed: dict[str, Any] = validate(orjson.loads(value))
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaValueException):
            return None
        return parsed

    return decode


CONTRACTS = {
    "shipped": load_schema("prediction-request"),
    "with a model field": _changed(lambda s: s["properties"].update(model=MODEL_FIELD)),
}
with_model = st.one_of(
    near_valid,
    st.tuples(near_valid, st.text(max_size=130) | json_values).map(lambda p: {**p[0], "model": p[1]}),
)


@pytest.mark.parametrize("name", list(CONTRACTS))
@settings(max_examples=400, deadline=None)
@given(with_model)
def test_the_compiled_check_and_the_full_validation_agree_on_accept_and_reject(name: str, value: Any) -> None:
    """Over generated valid and invalid requests: what the compiled check accepts, the full validation
    accepts as the same dict; what the full validation accepts, the check accepts too, unless it is one of
    the cases it leaves to the codec by design (unknown fields, integral floats)."""
    contract = CONTRACTS[name]
    check, off = check_for(contract)
    assert check is not None, off
    raw = orjson.dumps(value)
    fast, full = check.check(raw), _reference(contract)(raw)
    if fast is not None:
        assert full == fast
    left_to_the_codec = set(value) - set(contract["properties"]) or any(
        type(value.get(f)) is float for f in ("ts", "k")
    )
    if full is not None and not left_to_the_codec:
        assert fast is not None, "a valid request was refused by the fast path"
