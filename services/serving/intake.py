"""Intake: a polled batch of request messages becomes valid requests plus dead letters.

Every message is checked against the prediction-request contract. The full compiled JSON Schema validator
costs about 10 µs for a 20-candidate request, most of the service's per-request budget, so a request first
meets the fast path: :class:`PredictionRequest`, the contract written as msgspec types, which parses and
checks a message in one pass in C. Whatever the fast path does not accept goes to the codec, which either
accepts it after all (the fast path is conservative: a float ``ts`` of ``1.0`` is an integer to JSON
Schema, and a request with fields the contract does not name is left to the codec) or names the field and
the reason for the dead letter.

One source of truth: :func:`fast_path_differences` compares the JSON Schema msgspec generates from
:class:`PredictionRequest` (plus the two checks msgspec cannot express, :data:`CHECKED_AFTER_DECODING`)
with ``schemas/prediction-request.schema.json``. A unit test requires them to agree, and a
:class:`Decoder` whose schema no longer agrees turns the fast path off and uses the codec alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import orjson
from confluent_kafka import Message
from msgspec import UNSET, Meta, UnsetType

from schemas import codec, load_schema
from schemas.codec import MAX_EVENT_BYTES
from schemas.errors import ContractError
from schemas.eventtime import implausible

#: A dead letter carries at most this much of the original payload: an oversize request (up to the
#: broker's message limit) must still fit, as text, in a dead-letter message.
PAYLOAD_LIMIT = 64 * 1024
#: The source key is kept in the dead letter's key up to this size.
KEY_LIMIT = 4 * 1024

#: Past this, orjson (the codec's parser, and the prediction's encoder) reads an integer as a float or
#: cannot write it; msgspec would hand over a Python int. The fast path leaves such a ``ts`` to the codec.
_LARGEST_FAST_TS = 2**63 - 1

_Id = Annotated[str, Meta(min_length=1, max_length=128)]
#: A model's name, as the contract allows it (it names registry directories and consumer groups too).
_ModelName = Annotated[str, Meta(min_length=1, max_length=100, pattern="^[A-Za-z0-9._-]+$")]


class PredictionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The prediction-request contract (``schemas/prediction-request.schema.json``) as msgspec types.

    Unknown fields are refused here, not because the contract refuses them (it accepts them, for forward
    compatibility) but because msgspec skips their content without the codec's JSON rules (it would let
    invalid UTF-8 or ``1e999`` through): a request carrying them is left to the codec.
    """

    request_id: _Id
    user_id: _Id
    items: Annotated[list[_Id], Meta(min_length=1, max_length=1000)]  # unique: checked after decoding
    ts: Annotated[int, Meta(ge=0)]
    k: Annotated[int, Meta(ge=1, le=1000)] | UnsetType = UNSET
    context: Annotated[dict[str, Any], Meta(max_length=64)] | UnsetType = UNSET
    model: _ModelName | UnsetType = UNSET


#: What the contract requires that msgspec types cannot say, checked by :func:`fast_decode` after decoding,
#: as (path in the schema, keyword, value): the merged schema is what the fast path enforces.
CHECKED_AFTER_DECODING: tuple[tuple[tuple[str, ...], str, Any], ...] = (
    (("properties", "items"), "uniqueItems", True),
    # The fast path refuses unknown fields (see PredictionRequest) and the codec then accepts them.
    ((), "additionalProperties", True),
)

#: Keywords that document and do not constrain.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "examples", "$comment"})


def _constraints(schema: Any) -> Any:
    """``schema`` without its annotations, ``required`` as a sorted list: what a validator enforces."""
    if isinstance(schema, dict):
        out = {k: _constraints(v) for k, v in schema.items() if k not in _ANNOTATIONS}
        if isinstance(out.get("required"), list):
            out["required"] = sorted(out["required"])
        return out
    if isinstance(schema, list):
        return [_constraints(v) for v in schema]
    return schema


def enforced_schema() -> dict[str, Any]:
    """The JSON Schema the fast path enforces: msgspec's, from :class:`PredictionRequest`, with
    :data:`CHECKED_AFTER_DECODING` merged in."""
    generated = msgspec.json.schema(PredictionRequest)
    name = generated["$ref"].rsplit("/", 1)[1]
    schema: dict[str, Any] = generated["$defs"][name]
    for path, keyword, value in CHECKED_AFTER_DECODING:
        node = schema
        for step in path:
            node = node[step]
        node[keyword] = value
    constraints: dict[str, Any] = _constraints(schema)
    return constraints


def fast_path_differences(contract: dict[str, Any] | None = None) -> list[str]:
    """How the fast path's checks differ from the contract (the shipped prediction-request schema unless
    given), one line per difference; empty when they agree."""
    want = _constraints(load_schema("prediction-request") if contract is None else contract)
    got = enforced_schema()
    out: list[str] = []

    def compare(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                here = f"{where}/{key}"
                if key not in b:
                    out.append(f"{here}: the contract says {a[key]!r}, the fast path nothing")
                elif key not in a:
                    out.append(f"{here}: the fast path says {b[key]!r}, the contract nothing")
                else:
                    compare(a[key], b[key], here)
        elif a != b or type(a) is not type(b):
            out.append(f"{where}: the contract says {a!r}, the fast path {b!r}")

    compare(want, got, "")
    return out


_decode_request = msgspec.json.Decoder(PredictionRequest).decode


def fast_decode(value: bytes) -> dict[str, Any] | None:
    """The request in ``value`` if the fast path can vouch for it (then the codec would accept it too,
    as the same dict); ``None`` means ask the codec."""
    try:
        checked = _decode_request(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec raises RecursionError past its nesting depth (hostile JSON, e.g. 10,000 "[" in context):
        # the codec then rejects it with a reason, and the replica lives.
        return None
    items = checked.items
    if len(set(items)) != len(items) or checked.ts > _LARGEST_FAST_TS:
        return None
    if checked.context is not UNSET:
        # The context is free-form: its values are read by orjson, under the codec's JSON rules.
        try:
            parsed: dict[str, Any] = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed
    request: dict[str, Any] = {
        "request_id": checked.request_id,
        "user_id": checked.user_id,
        "items": items,
        "ts": checked.ts,
    }
    if checked.k is not UNSET:
        request["k"] = checked.k
    if checked.model is not UNSET:
        request["model"] = checked.model
    return request


@dataclass
class Intake:
    """The outcome of one polled batch."""

    #: Valid requests, and the message each came from, in poll order.
    requests: list[dict[str, Any]] = field(default_factory=list)
    sources: list[Message] = field(default_factory=list)
    #: Dead letters ready to produce: (key, encoded dead-letter event).
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: Client-side errors the consumer delivered in place of messages (no offset, nothing to answer).
    errors: list[str] = field(default_factory=list)


def dead_letter(
    msg: Message,
    error: str,
    now_ms: int | None = None,
    model_version: str | None = None,
    model: str | None = None,
) -> tuple[bytes | None, bytes]:
    """The dead-letter event for ``msg``, keyed like the source, its payload as (bounded) text;
    ``model_version`` names the version that failed on it (model failures only), ``model`` the model the
    request asked for (once it was read)."""
    raw = msg.value()
    if raw is None:
        payload, size = "", 0
    else:
        size = len(raw)
        payload = raw[:PAYLOAD_LIMIT].decode("utf-8", "replace")
    event: dict[str, Any] = {
        "error": error,
        "payload": payload,
        "source_topic": msg.topic() or "",
        "partition": msg.partition() or 0,
        "offset": max(msg.offset() or 0, 0),
        "ts": now_ms if now_ms is not None else int(time.time() * 1000),
    }
    if model_version is not None:
        event["model_version"] = model_version
    if model is not None:
        event["model"] = model
    if size > PAYLOAD_LIMIT:
        event["payload_bytes"] = size
        event["payload_truncated"] = True
    key = msg.key()
    if key is not None and len(key) > KEY_LIMIT:
        key = key[:KEY_LIMIT]
    return key, codec("dead-letter").encode(event)


class Decoder:
    """Turns polled messages into an :class:`Intake`.

    A request whose ``ts`` is implausible for its message's broker timestamp (more than ``future_ms``
    after it or ``past_ms`` before it: :mod:`schemas.eventtime`) is dead-lettered too: its event time
    would be the prediction's ``request_ts``, which the monitor's join runs on. ``contract`` is the schema
    the fast path is checked against at start (the shipped one unless given: tests give others).
    """

    def __init__(
        self,
        future_ms: int | None = None,
        past_ms: int | None = None,
        contract: dict[str, Any] | None = None,
    ) -> None:
        self.codec = codec("prediction-request")
        #: Why the fast path is off (its checks no longer match the contract), or empty: it is on.
        self.fast_path_off = fast_path_differences(contract)
        self.future_ms, self.past_ms = future_ms, past_ms

    def decode(self, messages: Sequence[Message]) -> Intake:
        intake = Intake()
        requests, sources = intake.requests, intake.sources
        fast = None if self.fast_path_off else fast_decode
        for msg in messages:
            error = msg.error()
            if error is not None:
                intake.errors.append(error.str())
                continue
            value = msg.value()
            # The common case: a small, well-formed request, parsed and checked once, in C.
            if fast is not None and value is not None and len(value) <= MAX_EVENT_BYTES:
                request = fast(value)
            else:
                request = None
            if request is None:
                # Anything else meets the codec, which accepts it after all or names the field and the reason.
                try:
                    request = self.codec.decode(value)
                except ContractError as exc:
                    intake.dead.append(dead_letter(msg, str(exc)))
                    continue
            if self.future_ms is not None and self.past_ms is not None:
                kind, broker_ms = msg.timestamp()
                problem = implausible(
                    request["ts"], broker_ms if kind else None, self.future_ms, self.past_ms
                )
                if problem is not None:
                    intake.dead.append(dead_letter(msg, f"prediction-request: {problem}"))
                    continue
            requests.append(request)
            sources.append(msg)
        return intake
