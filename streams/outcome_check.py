"""The monitor's fast read of an outcome: the contract as msgspec types, checked and decoded in one pass in
C, into what the join needs.

Why. The router reads every outcome, and the codec (orjson, then the compiled JSON Schema validator, whose
``uniqueItems`` check is a Python loop) cost some 4 µs of the 4-5 µs an outcome took to read: a py-spy
profile of the worker on a 300,000-request backlog put it at a fifth of the source reader's samples.
Here :class:`Outcome` states ``schemas/outcome.schema.json``'s fields with their bounds; a unit test
requires the JSON Schema msgspec generates from it (plus the checks made after decoding: unique purchased
items, 64-bit event times) to be the contract's, as for predictions (:mod:`streams.prediction_check`).

What this does not vouch for goes to the codec, which accepts it after all or names the field and the
reason: a field the contract does not name (it allows them, but msgspec would skip their content without
the codec's JSON rules), a float ``ts`` of ``1.0``, an invalid outcome.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from streams.join import OUTCOME
from streams.prediction_check import LARGEST_FAST_INT, Id, Millis, ModelName, decoded, plain_model


class Outcome(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An outcome event, as ``schemas/outcome.schema.json`` says (a field it does not name sends the
    outcome to the codec)."""

    request_id: Id
    purchased: Annotated[list[Id], Meta(max_length=1000)]
    ts: Millis
    model: ModelName | UnsetType = UNSET

    def joinable(self, source: int) -> dict[str, Any]:
        """What the join needs (:func:`streams.join.joinable_outcome`, the same fields)."""
        return {
            "kind": OUTCOME,
            "request_id": self.request_id,
            "ts": self.ts,
            "purchased": self.purchased,
            "source": source,
        }


_decoder = msgspec.json.Decoder(Outcome)


def read_outcome(value: bytes | None) -> Outcome | None:
    """The outcome in a message value if the fast path vouches for it; ``None``: ask the codec."""
    o = decoded(_decoder, value)
    if o is None or len(set(o.purchased)) != len(o.purchased) or o.ts > LARGEST_FAST_INT:
        return None
    return o if plain_model(o.model) else None
