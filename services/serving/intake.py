"""Intake: a polled batch of request messages becomes valid requests plus dead letters.

Every message is parsed (orjson) and checked against the prediction-request contract. The full compiled
JSON Schema validator costs about 10 µs for a 20-candidate request, most of the service's per-request
budget, so a request first meets :func:`well_formed`, a hand-written check that accepts only what the
schema accepts. Whatever it does not accept goes to the codec, which either accepts it after all (the fast
check is conservative: a float ``ts`` of ``1.0`` is an integer to JSON Schema) or names the field and the
reason for the dead letter. :func:`fast_check_applies` guards the shortcut: if the schema file changes,
the intake falls back to the codec alone rather than trust an out-of-date check.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Message

from schemas import codec, load_schema
from schemas.codec import MAX_EVENT_BYTES
from schemas.errors import ContractError
from schemas.eventtime import implausible

#: A dead letter carries at most this much of the original payload: an oversize request (up to the
#: broker's message limit) must still fit, as text, in a dead-letter message.
PAYLOAD_LIMIT = 64 * 1024
#: The source key is kept in the dead letter's key up to this size.
KEY_LIMIT = 4 * 1024

#: sha256 of the prediction-request schema :func:`well_formed` was written against.
_SCHEMA_DIGEST = "33450d659f1e49572a57dd4779f644324112bd7fe33e65613d94fd3f2f5ab2ed"


def _schema_digest() -> str:
    return hashlib.sha256(
        orjson.dumps(load_schema("prediction-request"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def fast_check_applies() -> bool:
    """Whether :func:`well_formed` still matches the prediction-request schema on disk."""
    return _schema_digest() == _SCHEMA_DIGEST


def well_formed(d: Any) -> bool:
    """True only for a valid prediction-request (False may still be valid: ask the codec)."""
    if type(d) is not dict:
        return False
    rid = d.get("request_id")
    uid = d.get("user_id")
    items = d.get("items")
    ts = d.get("ts")
    if type(rid) is not str or not 0 < len(rid) <= 128:
        return False
    if type(uid) is not str or not 0 < len(uid) <= 128:
        return False
    if type(ts) is not int or ts < 0:
        return False
    if type(items) is not list or not 0 < len(items) <= 1000:
        return False
    for item in items:
        if type(item) is not str or not 0 < len(item) <= 128:
            return False
    if len(set(items)) != len(items):
        return False
    if "k" in d:
        k = d["k"]
        if type(k) is not int or not 1 <= k <= 1000:
            return False
    if "context" in d:
        context = d["context"]
        if type(context) is not dict or len(context) > 64:
            return False
    return True


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
    msg: Message, error: str, now_ms: int | None = None, model_version: str | None = None
) -> tuple[bytes | None, bytes]:
    """The dead-letter event for ``msg``, keyed like the source, its payload as (bounded) text;
    ``model_version`` names the version that failed on it (model failures only)."""
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
    would be the prediction's ``request_ts``, which the monitor's join runs on.
    """

    def __init__(self, future_ms: int | None = None, past_ms: int | None = None) -> None:
        self.codec = codec("prediction-request")
        self.fast = fast_check_applies()
        self.future_ms, self.past_ms = future_ms, past_ms

    def decode(self, messages: Sequence[Message]) -> Intake:
        intake = Intake()
        requests, sources = intake.requests, intake.sources
        loads, fast = orjson.loads, well_formed if self.fast else None
        for msg in messages:
            error = msg.error()
            if error is not None:
                intake.errors.append(error.str())
                continue
            value = msg.value()
            # The common case: a small, parseable, well-formed request, checked without the full validator.
            if fast is not None and value is not None and len(value) <= MAX_EVENT_BYTES:
                try:
                    request = loads(value)
                except orjson.JSONDecodeError:
                    request = None
                if not fast(request):
                    request = None
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
