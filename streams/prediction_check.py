"""The monitor's fast read of a prediction: the contract as msgspec types, checked and decoded in one pass
in C, into what the join needs.

Why. The router reads every prediction. The codec (orjson, then the compiled JSON Schema validator)
costs some 10 µs for a 20-candidate prediction and builds a dict of every field, scores included, of which
the join keeps the candidates' ids, the recommended ones, the version, the user and the event time
(:func:`streams.join.joinable_prediction`). Here :class:`Prediction` states the contract's fields with
their bounds, so one ``msgspec`` decode checks a prediction and hands over typed fields; a unit test
requires the JSON Schema msgspec generates from it (plus the checks made after decoding: unique
recommended items, 64-bit event times) to be ``schemas/prediction.schema.json``'s, so the two cannot drift.

Whatever this does not vouch for (a field the contract does not name, a float ``ts`` of ``1.0``, an
invalid prediction) goes to the codec, which accepts it after all or names the field and the reason.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from schemas.codec import MAX_EVENT_BYTES

Id = Annotated[str, Meta(min_length=1, max_length=128)]
Millis = Annotated[int, Meta(ge=0)]
Score = Annotated[float, Meta(ge=0, le=1)]
ModelName = Annotated[str, Meta(min_length=1, max_length=100, pattern="^[A-Za-z0-9._-]+$")]
#: orjson (the codec's parser) reads integers past 64 bits as floats: such a ``ts`` is the codec's to judge.
LARGEST_FAST_INT = 2**63 - 1


class Prediction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A prediction event, as ``schemas/prediction.schema.json`` says (its other fields are refused, and
    the prediction left to the codec: msgspec would skip their content without the codec's JSON rules)."""

    request_id: Id
    user_id: Id
    model_version: Id
    scores: Annotated[dict[str, Score], Meta(max_length=1000)]
    recommended: Annotated[list[Id], Meta(max_length=1000)]
    instance: Id
    ts: Millis
    request_ts: Millis | UnsetType = UNSET
    latency_ms: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    model: ModelName | UnsetType = UNSET

    @property
    def event_ts(self) -> int:
        """The event time the join uses: the request's, or the prediction's own from older producers."""
        return self.ts if self.request_ts is UNSET else self.request_ts

    def joinable(self, source: int, kind: str) -> dict[str, Any]:
        """What the join needs (:func:`streams.join.joinable_prediction`, the same fields)."""
        return {
            "kind": kind,
            "user": self.user_id,
            "request_id": self.request_id,
            "ts": self.event_ts,
            "version": self.model_version,
            "candidates": list(self.scores),
            "recommended": self.recommended,
            "source": source,
        }


S = TypeVar("S", bound=msgspec.Struct)


def decoded(decoder: msgspec.json.Decoder[S], value: bytes | None) -> S | None:
    """``value`` decoded and checked by ``decoder``'s types, or ``None`` (too large for the codec, not
    JSON, or out of contract): the codec then judges it."""
    if value is None or len(value) > MAX_EVENT_BYTES:
        return None
    try:
        return decoder.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def plain_model(model: str | UnsetType) -> bool:
    """Whether a decoded ``model`` is absent or what the contract's pattern means (msgspec's pattern lets
    ``"home\n"`` through: a ``$`` matches before a final newline in Python's ``re``)."""
    return model is UNSET or not model.endswith("\n")


_decoder = msgspec.json.Decoder(Prediction)


def read_prediction(value: bytes | None) -> Prediction | None:
    """The prediction in a message value if the fast path vouches for it; ``None``: ask the codec."""
    p = decoded(_decoder, value)
    if p is None or len(set(p.recommended)) != len(p.recommended) or p.ts > LARGEST_FAST_INT:
        return None
    if p.request_ts is not UNSET and p.request_ts > LARGEST_FAST_INT:
        return None
    return p if plain_model(p.model) else None
