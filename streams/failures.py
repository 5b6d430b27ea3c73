"""Model failures: the prediction service's dead letters that name the model version which failed.

The monitor's ``failures`` agent reads ``rec.requests.dlq``, keeps the model failures (a dead letter with
a ``model_version``; bad input names none and is not the model's fault), and sends them to the labelled
stream ``<prefix>monitor-labelled`` keyed by version, one message per version and batch, like the join's
labelled requests: so a version's failures reach the worker that owns its windows, in the order of that
partition, and a message counted before a crash is recognised by its offset.

A message of failures is a JSON object, ``{"v": version, "failed": [[request_id, ts], ...]}``; the join's
messages are JSON arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas import codec
from schemas.errors import ContractError


@dataclass(frozen=True)
class Failure:
    version: str
    request_id: str  # from the request in the payload; the dead letter's position when it cannot be read
    ts: int  # when the replica gave up on it (the replica's clock, like a prediction's ts)
    model: str | None = None  # the model the request asked for (None: the default model)


def failure_of(value: bytes | None) -> Failure | None:
    """The model failure a dead letter records, or ``None`` (bad input, or not a dead letter at all)."""
    try:
        dead = codec("dead-letter").decode(value)
    except ContractError:
        return None
    version = dead.get("model_version")
    if not version:
        return None
    try:
        request_id = str(orjson.loads(dead["payload"])["request_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        request_id = f"{dead['source_topic']}[{dead['partition']}]@{dead['offset']}"
    model = dead.get("model")
    return Failure(str(version), request_id, int(dead["ts"]), model if isinstance(model, str) else None)


def is_failures(value: bytes) -> bool:
    """Whether a message of the labelled stream holds failures (an object), not labelled requests."""
    return value[:1] == b"{"


def encode_failures(version: str, failures: list[Failure]) -> bytes:
    return orjson.dumps({"v": version, "failed": [[f.request_id, f.ts] for f in failures]})


def decode_failures(value: bytes) -> tuple[str, list[tuple[str, int]]]:
    doc: dict[str, Any] = orjson.loads(value)
    return str(doc["v"]), [(str(rid), int(ts)) for rid, ts in doc["failed"]]
