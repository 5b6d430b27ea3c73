"""Encode and decode contract events, validated against their compiled JSON Schemas.

Each schema is compiled once (fastjsonschema generates a Python function per schema), checked against the
draft 2020-12 meta-schema's basics at load, and used on both produce and consume. A failure raises
:class:`~schemas.errors.ContractError` naming the field and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson

from schemas.errors import ContractError

EVENTS = (
    "prediction-request",
    "prediction",
    "outcome",
    "metrics",
    "alert",
    "model-command",
    "model-event",
    "dead-letter",
    "experiment",
)

#: Larger messages are refused before parsing: the biggest valid request (1,000 candidates of 128 chars)
#: is well under this.
MAX_EVENT_BYTES = 1_000_000


def load_schema(event: str) -> dict[str, Any]:
    """The JSON Schema document of ``event``, as shipped in the ``schemas`` package."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    text = resources.files("schemas").joinpath(f"{event}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_example(event: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath(f"{event}.example.json").read_text("utf-8")
    example: dict[str, Any] = json.loads(text)
    return example


_MISSING = re.compile(r"'([^']*)'")


def _field(name: str) -> str:
    # fastjsonschema names fields "data.items[3]"; users know them as "items[3]".
    if name == "data":
        return ""
    return name[5:] if name.startswith("data.") else name


class Codec:
    """Validating JSON codec for one contract event.

    >>> codec = Codec("outcome")
    >>> codec.decode(b'{"request_id": "r1", "purchased": [], "ts": 1}')["request_id"]
    'r1'
    """

    def __init__(self, event: str) -> None:
        self.event = event
        self.schema = load_schema(event)
        if self.schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            raise ValueError(f"{event}: schema must declare draft 2020-12")
        self._validate: Callable[[Any], Any] = fastjsonschema.compile(self.schema)

    def validate(self, value: Any) -> dict[str, Any]:
        try:
            self._validate(value)
        except fastjsonschema.JsonSchemaValueException as exc:
            reason = exc.message
            field = _field(exc.name or "data")
            if exc.name and reason.startswith(exc.name + " "):
                reason = reason[len(exc.name) + 1 :]
            if exc.rule == "required":
                missing = _MISSING.findall(reason)
                field = ".".join(p for p in (field, ", ".join(missing)) if p)
                reason = "is required"
            raise ContractError(self.event, field, reason) from exc
        result: dict[str, Any] = value
        return result

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Parse and validate one message value."""
        if data is None:
            raise ContractError(self.event, "", "message value is null")
        if len(data) > MAX_EVENT_BYTES:
            raise ContractError(self.event, "", f"message is {len(data)} bytes, over {MAX_EVENT_BYTES}")
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # orjson also rejects invalid UTF-8 here, which the contract forbids.
            raise ContractError(self.event, "", f"not valid UTF-8 JSON: {exc}") from exc
        return self.validate(value)

    def encode(self, value: dict[str, Any]) -> bytes:
        """Validate and serialize one event."""
        self.validate(value)
        return orjson.dumps(value)


@cache
def codec(event: str) -> Codec:
    """The shared, compiled codec of ``event``."""
    return Codec(event)
