"""Intake: a polled batch of request messages becomes valid requests plus dead letters.

Every message is checked against the prediction-request contract. The full compiled JSON Schema validator
costs about 10 µs for a 20-candidate request, most of the service's per-request budget, so a request first
meets the fast path: the contract compiled into msgspec types (:mod:`services.serving.request_check`),
which parses and checks a message in one pass in C. Whatever the fast path does not accept goes to the
codec, which either accepts it after all (the fast path is conservative: a float ``ts`` of ``1.0`` is an
integer to JSON Schema, and a request with fields the contract does not name is left to the codec) or names
the field and the reason for the dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from schemas import codec, load_schema
from schemas.codec import MAX_EVENT_BYTES
from schemas.errors import ContractError
from schemas.eventtime import implausible
from services.serving.request_check import FastCheck, check_for

#: A dead letter carries at most this much of the original payload: an oversize request (up to the
#: broker's message limit) must still fit, as text, in a dead-letter message.
PAYLOAD_LIMIT = 64 * 1024
#: The source key is kept in the dead letter's key up to this size.
KEY_LIMIT = 4 * 1024

#: The shipped contract's check, compiled once at import (``None`` if it cannot be: see its reasons).
SHIPPED_CHECK, SHIPPED_CHECK_OFF = check_for(load_schema("prediction-request"))


def _codec_only(value: bytes) -> dict[str, Any] | None:
    return None


#: The shipped contract's fast check: the request in ``value`` if it vouches for it; ``None``: ask the codec.
fast_decode = SHIPPED_CHECK.check if SHIPPED_CHECK is not None else _codec_only


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
    the fast path is compiled from (the shipped one unless given: tests give others).
    """

    def __init__(
        self,
        future_ms: int | None = None,
        past_ms: int | None = None,
        contract: dict[str, Any] | None = None,
    ) -> None:
        self.codec = codec("prediction-request")
        #: The fast check, and why it is off (the contract says what it cannot check exactly), or empty.
        self.fast: FastCheck | None
        if contract is None:
            self.fast, self.fast_path_off = SHIPPED_CHECK, SHIPPED_CHECK_OFF
        else:
            self.fast, self.fast_path_off = check_for(contract)
        self.future_ms, self.past_ms = future_ms, past_ms

    def decode(self, messages: Sequence[Message]) -> Intake:
        intake = Intake()
        requests, sources = intake.requests, intake.sources
        fast = None if self.fast is None else self.fast.check
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
