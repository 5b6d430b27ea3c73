"""What the join hands on: labelled requests (:class:`Labelled`, one version's, for its windows) and shadow
pairs (:class:`Paired`, for an experiment's comparison only), and the bundles of the labelled topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.metrics import Counts


@dataclass(frozen=True, slots=True)
class Labelled:
    """A prediction with its label: what the join hands to the per-version windows.

    ``counts`` is ``None`` for an expired prediction that config says to drop (it is still reported).
    """

    request_id: str
    model_version: str
    ts: int
    counts: Counts | None
    expired: bool = False
    #: Empty when an older monitor kept the prediction pending; not part of the label, so not compared.
    user_id: str = field(default="", compare=False)

    def encode(self) -> bytes:
        c = self.counts
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "model_version": self.model_version,
                "ts": self.ts,
                "counts": None if c is None else [c.tp, c.fp, c.fn, c.tn],
                "expired": self.expired,
                "user_id": self.user_id,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Labelled:
        return cls.from_dict(orjson.loads(data))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Labelled:
        c = d["counts"]
        counts = None if c is None else Counts(*c)
        return cls(
            d["request_id"], d["model_version"], int(d["ts"]), counts, d["expired"], d.get("user_id", "")
        )


@dataclass(frozen=True, slots=True)
class Paired:
    """A shadow pair: the incumbent's and the shadow candidate's predictions of one request, labelled by
    the same outcome (or both expired). Only the experiment's comparison reads it, never a version's
    windows: a shadow prediction reached no user."""

    request_id: str
    ts: int
    incumbent: str
    candidate: str
    incumbent_counts: Counts
    candidate_counts: Counts


def encode_bundle(items: list[Labelled]) -> bytes:
    """Labelled requests of one version as one message: the repartition costs a message per version and
    batch, not per request."""
    return b"[" + b",".join(item.encode() for item in items) + b"]"


def decode_bundle(data: bytes) -> list[Labelled]:
    return [Labelled.from_dict(d) for d in orjson.loads(data)]
