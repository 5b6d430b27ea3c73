"""Every schema accepts its example and rejects malformed variants, naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas import EVENTS, Codec, ContractError, codec, load_example, load_schema
from schemas import topics as contract

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("event", EVENTS)
def test_schema_is_valid_draft_2020_12_and_accepts_its_example(event: str) -> None:
    schema = load_schema(event)
    jsonschema.Draft202012Validator.check_schema(schema)
    example = load_example(event)
    jsonschema.Draft202012Validator(schema).validate(example)
    assert codec(event).decode(codec(event).encode(example)) == example


def test_every_contract_topic_has_a_schema_file() -> None:
    files = {p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json")}
    assert files == set(EVENTS) == {t.event for t in contract.ALL}
    assert {p.name.removesuffix(".example.json") for p in SCHEMA_DIR.glob("*.example.json")} == files


def _with(event: str, path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(load_example(event))
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return doc


_DELETE = object()

MALFORMED = [
    ("prediction-request", "items", [], "items"),
    ("prediction-request", "items", ["a", "a"], "items"),
    ("prediction-request", "items", [f"i{n}" for n in range(1001)], "items"),
    ("prediction-request", "items", ["ok", 7], "items[1]"),
    ("prediction-request", "request_id", "x" * 129, "request_id"),
    ("prediction-request", "request_id", "", "request_id"),
    ("prediction-request", "user_id", _DELETE, "user_id"),
    ("prediction-request", "ts", "yesterday", "ts"),
    ("prediction-request", "ts", 1.5, "ts"),
    ("prediction-request", "k", 0, "k"),
    ("prediction-request", "context", [1], "context"),
    ("prediction", "scores", {"i-7": 1.5}, "scores.i-7"),
    ("prediction", "model_version", _DELETE, "model_version"),
    ("prediction", "recommended", ["i-7", "i-7"], "recommended"),
    ("outcome", "purchased", "i-7", "purchased"),
    ("outcome", "purchased", _DELETE, "purchased"),
    ("metrics", "f1", 2, "f1"),
    ("metrics", "window.kind", "sliding", "window.kind"),
    ("metrics", "n", -1, "n"),
    ("alert", "state", "pending", "state"),
    ("alert", "threshold", None, "threshold"),
    ("model-command", "action", "delete", "action"),
    ("model-command", "signature", "not-hex", "signature"),
    ("model-event", "event", "exploded", "event"),
    ("dead-letter", "offset", -3, "offset"),
    ("dead-letter", "error", "", "error"),
]


@pytest.mark.parametrize(("event", "path", "value", "field"), MALFORMED)
def test_malformed_events_are_rejected_naming_the_field(
    event: str, path: str, value: Any, field: str
) -> None:
    doc = _with(event, path, value)
    c = Codec(event)
    with pytest.raises(ContractError) as info:
        c.encode(doc)
    assert info.value.field == field
    assert field in str(info.value)
    with pytest.raises(ContractError):
        c.decode(json.dumps(doc).encode())
    # The reference validator agrees that the document is invalid.
    assert not jsonschema.Draft202012Validator(load_schema(event)).is_valid(doc)


def test_unknown_extra_fields_are_accepted_for_forward_compatibility() -> None:
    doc = load_example("prediction-request") | {"experiment": "b", "nested": {"x": [1, 2]}}
    assert codec("prediction-request").decode(json.dumps(doc).encode())["experiment"] == "b"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "null"),
        (b"", "JSON"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b'{"request_id": "r1", "user_id": "\xe9t\xe9", "items": ["a"], "ts": 1}', "UTF-8"),
        (b"[1, 2, 3]", "object"),
        (b"{" * 5000, "JSON"),
        (b'{"request_id": "' + b"x" * 1_000_001 + b'"}', "over"),
    ],
)
def test_undecodable_bytes_are_contract_errors(data: bytes | None, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        codec("prediction-request").decode(data)
    assert reason in str(info.value)


def test_topic_names_carry_the_prefix() -> None:
    assert contract.REQUESTS.name("rec.") == "rec.requests"
    assert contract.resolve("blue.requests.dlq", "blue.") is contract.REQUESTS_DLQ
    assert contract.resolve("rec.requests", "blue.") is None
