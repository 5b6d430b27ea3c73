"""Join predictions with outcomes by request_id, on one partition, in event time.

Predictions and outcomes are keyed by request_id and co-partitioned, so one partition's join is whole in
one place. Either may arrive first: whichever comes first waits in the pending store (a Faust table with a
changelog, in the worker) until the other comes or the label window closes.

Clocks. Each partition keeps two event-time watermarks, the highest ``ts`` seen on each stream. A
prediction's label window closes when the *outcome* stream has passed ``ts + window``: outcomes arrive
in time order, so by then any outcome within the window has been seen, however far the two topics'
consumers drift apart (after a restart one topic may be read ahead of the other). Symmetrically, an
outcome waiting for its prediction is given up when the *prediction* stream has passed ``ts + window``.

Expired predictions are resolved by config: counted as "no purchase" (the storefront's usual meaning) or
dropped as unlabelled. Either way they are reported as expired.

Duplicates. The monitor is at-least-once: after a crash it reads again what it had not committed, with
state that may already include it, and upstream services may send an event twice. A joined or expired
request therefore leaves a marker until both clocks are two windows past it; a prediction or outcome that
finds a marker is a duplicate and is ignored. Markers are kept in buckets of a second of event time (one
record per bucket, not per request: they are most of the join's writes otherwise). A prediction two
windows behind the prediction clock (or an outcome a window behind it) may be a replay whose marker is
gone: it is ignored too, counted as late (or orphan). Each rule compares a stream with its own clock, so
none misfires when one topic's consumer runs ahead of the other's.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from schemas.metrics import Counts, request_counts

Unlabelled = Literal["no_purchase", "drop"]

PREDICTION, OUTCOME, DONE = "p", "o", "d"
#: Markers are grouped by the prediction clock when they were set, in buckets of this many ms.
MARKER_BUCKET_MS = 1000


class PendingStore(Protocol):
    """Where pending requests live: a dict in tests and in the plain baseline, a Faust table in the worker."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, dict[str, Any]]]: ...

    def put_markers(self, bucket: int, request_ids: list[str]) -> None: ...

    def delete_markers(self, bucket: int) -> None: ...

    def marker_buckets(self) -> Iterable[tuple[int, list[str]]]: ...


class DictStore:
    """A :class:`PendingStore` in memory."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.markers: dict[int, list[str]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.data.items()))

    def __len__(self) -> int:
        return len(self.data)

    def put_markers(self, bucket: int, request_ids: list[str]) -> None:
        self.markers[bucket] = request_ids

    def delete_markers(self, bucket: int) -> None:
        self.markers.pop(bucket, None)

    def marker_buckets(self) -> Iterator[tuple[int, list[str]]]:
        return iter(list(self.markers.items()))


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

    def encode(self) -> bytes:
        c = self.counts
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "model_version": self.model_version,
                "ts": self.ts,
                "counts": None if c is None else [c.tp, c.fp, c.fn, c.tn],
                "expired": self.expired,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Labelled:
        return cls.from_dict(orjson.loads(data))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Labelled:
        c = d["counts"]
        counts = None if c is None else Counts(*c)
        return cls(d["request_id"], d["model_version"], int(d["ts"]), counts, d["expired"])


def encode_bundle(items: list[Labelled]) -> bytes:
    """Labelled requests of one version as one message: the repartition costs a message per version and
    batch, not per request."""
    return b"[" + b",".join(item.encode() for item in items) + b"]"


def decode_bundle(data: bytes) -> list[Labelled]:
    return [Labelled.from_dict(d) for d in orjson.loads(data)]


@dataclass
class JoinStats:
    joined: int = 0
    outcome_first: int = 0
    expired: int = 0
    duplicates: int = 0
    late: int = 0
    orphan_outcomes: int = 0

    def add(self, other: JoinStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Clocks:
    """A partition's event-time watermarks (ms); ``-1`` before the first event."""

    predictions: int = -1
    outcomes: int = -1

    def as_dict(self) -> dict[str, int]:
        return {"predictions": self.predictions, "outcomes": self.outcomes}


@dataclass
class Joiner:
    """The join of one partition. Feed it events in the partition's order; it returns labelled requests."""

    store: PendingStore
    label_window_ms: int
    unlabelled: Unlabelled = "no_purchase"
    clocks: Clocks = field(default_factory=Clocks)
    stats: JoinStats = field(default_factory=JoinStats)
    # (deadline, request_id) per kind; entries may be stale (the request moved on), so each is checked.
    _predictions: list[tuple[int, str]] = field(default_factory=list)
    _outcomes: list[tuple[int, str]] = field(default_factory=list)
    _marked: dict[str, int] = field(default_factory=dict)  # request_id -> its marker's bucket
    _buckets: dict[int, list[str]] = field(default_factory=dict)
    _bucket_order: list[int] = field(default_factory=list)  # a heap of the buckets' numbers
    _dirty_buckets: set[int] = field(default_factory=set)

    # -- events ------------------------------------------------------------------------------------------

    def _kind(self, rid: str) -> tuple[str | None, dict[str, Any] | None]:
        if rid in self._marked:
            return DONE, None
        entry = self.store.get(rid)
        return (entry["k"] if entry else None), entry

    def prediction(self, p: dict[str, Any]) -> list[Labelled]:
        rid, ts = p["request_id"], int(p["ts"])
        out: list[Labelled] = []
        kind, entry = self._kind(rid)
        if kind in (PREDICTION, DONE):
            self.stats.duplicates += 1
        elif ts + 2 * self.label_window_ms < self.clocks.predictions:
            self.stats.late += 1
            if kind == OUTCOME:
                self.store.delete(rid)
        elif kind == OUTCOME:
            assert entry is not None
            self.stats.outcome_first += 1
            out.append(self._resolve(rid, _pending_prediction(p), entry))
        elif ts + self.label_window_ms < self.clocks.outcomes:
            # Every outcome within its window has been seen already, and none was this one's.
            out.append(self._resolve(rid, _pending_prediction(p), None))
        else:
            self.store.put(rid, _pending_prediction(p))
            heapq.heappush(self._predictions, (ts + self.label_window_ms, rid))
        if ts > self.clocks.predictions:
            self.clocks.predictions = ts
            self._expire_outcomes()
            self._forget_markers()
        return out

    def outcome(self, o: dict[str, Any]) -> list[Labelled]:
        rid, ts = o["request_id"], int(o["ts"])
        out: list[Labelled] = []
        kind, entry = self._kind(rid)
        if kind in (OUTCOME, DONE):
            self.stats.duplicates += 1
        elif kind == PREDICTION:
            assert entry is not None
            out.append(self._resolve(rid, entry, {"k": OUTCOME, "ts": ts, "b": o["purchased"]}))
        elif ts + self.label_window_ms < self.clocks.predictions:
            # Its prediction would have come by now: nothing can be judged with it.
            self.stats.orphan_outcomes += 1
        else:
            self.store.put(rid, {"k": OUTCOME, "ts": ts, "b": o["purchased"]})
            heapq.heappush(self._outcomes, (ts + self.label_window_ms, rid))
        if ts > self.clocks.outcomes:
            self.clocks.outcomes = ts
            out += self._expire_predictions()
            self._forget_markers()
        return out

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _resolve(self, rid: str, pred: dict[str, Any], outcome: dict[str, Any] | None) -> Labelled:
        """Label ``pred`` with ``outcome`` (``None``: the window closed without one), leave a marker."""
        ts = int(pred["ts"])
        self.store.delete(rid)
        # The bucket ends after ts: the marker outlives ts + 2 windows, which the late rule relies on.
        bucket = max(self.clocks.predictions, ts) // MARKER_BUCKET_MS
        ids = self._buckets.get(bucket)
        if ids is None:
            ids = self._buckets[bucket] = []
            heapq.heappush(self._bucket_order, bucket)
        ids.append(rid)
        self._marked[rid] = bucket
        self._dirty_buckets.add(bucket)
        if outcome is not None and int(outcome["ts"]) <= ts + self.label_window_ms:
            self.stats.joined += 1
            return Labelled(rid, pred["v"], ts, request_counts(pred["c"], pred["r"], outcome["b"]))
        self.stats.expired += 1
        counts = request_counts(pred["c"], pred["r"], ()) if self.unlabelled == "no_purchase" else None
        return Labelled(rid, pred["v"], ts, counts, expired=True)

    def _expire_predictions(self) -> list[Labelled]:
        out: list[Labelled] = []
        heap, now = self._predictions, self.clocks.outcomes
        while heap and heap[0][0] < now:
            deadline, rid = heapq.heappop(heap)
            entry = self.store.get(rid)
            if (
                entry is not None
                and entry["k"] == PREDICTION
                and entry["ts"] + self.label_window_ms == deadline
            ):
                out.append(self._resolve(rid, entry, None))
        return out

    def _expire_outcomes(self) -> None:
        heap, now = self._outcomes, self.clocks.predictions
        while heap and heap[0][0] < now:
            deadline, rid = heapq.heappop(heap)
            entry = self.store.get(rid)
            if entry is not None and entry["k"] == OUTCOME and entry["ts"] + self.label_window_ms == deadline:
                self.store.delete(rid)
                self.stats.orphan_outcomes += 1

    def _forget_markers(self) -> None:
        heap, now = self._bucket_order, min(self.clocks.predictions, self.clocks.outcomes)
        while heap and (heap[0] + 1) * MARKER_BUCKET_MS + 2 * self.label_window_ms < now:
            bucket = heapq.heappop(heap)
            for rid in self._buckets.pop(bucket, []):
                if self._marked.get(rid) == bucket:
                    del self._marked[rid]
            self._dirty_buckets.discard(bucket)
            self.store.delete_markers(bucket)

    def sync(self) -> None:
        """Write the marker buckets changed since the last call to the store (once per batch)."""
        for bucket in sorted(self._dirty_buckets):
            self.store.put_markers(bucket, list(self._buckets[bucket]))
        self._dirty_buckets.clear()

    def rebuild(
        self, entries: Iterable[tuple[str, dict[str, Any]]], buckets: Iterable[tuple[int, list[str]]] = ()
    ) -> None:
        """Rebuild the deadline heaps and markers from the store's records of this partition (a restart)."""
        w = self.label_window_ms
        self._predictions, self._outcomes = [], []
        for rid, entry in entries:
            kind, ts = entry["k"], int(entry["ts"])
            if kind == PREDICTION:
                self._predictions.append((ts + w, rid))
            elif kind == OUTCOME:
                self._outcomes.append((ts + w, rid))
        for heap in (self._predictions, self._outcomes):
            heapq.heapify(heap)
        self._buckets = {int(b): list(ids) for b, ids in buckets}
        self._bucket_order = sorted(self._buckets)
        self._marked = {rid: b for b, ids in self._buckets.items() for rid in ids}
        self._dirty_buckets = set()

    def pending(self) -> int:
        """Requests waiting for their other half (markers excluded); heaps may hold stale entries."""
        return len(self._predictions) + len(self._outcomes)


def _pending_prediction(p: dict[str, Any]) -> dict[str, Any]:
    # Only what the counts need: the candidates (the score keys), the recommended ones, the version.
    return {
        "k": PREDICTION,
        "ts": int(p["ts"]),
        "v": p["model_version"],
        "c": list(p["scores"]),
        "r": p["recommended"],
    }
