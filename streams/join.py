"""Join predictions with outcomes by request_id, in event time: the storefront's clock on both sides.

A prediction's event time is the ``request_ts`` the service copied from its request (its own ``ts`` if an
older producer left it out); an outcome's is its ``ts``. The monitor first repartitions both streams by
request_id through one internal topic with one partitioner (:mod:`streams.routing`), so a request's
prediction and outcome meet in one :class:`Joiner` whatever partitioner their producers used. Either may
arrive first: whichever comes first waits in the pending store (:mod:`streams.join_store`; a Faust table
with a changelog, in the worker) until the other comes or the label window closes.

Clocks (:mod:`streams.watermarks`). Each stream has a watermark, the smallest of its source partitions'
latest plausible event times less the out-of-order allowance; a bad timestamp never reaches it. A
prediction's label window closes when the *outcome* watermark has passed ``ts + window``: by then any
outcome within the window has been seen, however far the two streams' consumers drift apart. The
prediction stream gives no such promise: replicas catching up after an outage serve each request
partition's backlog at their own pace, so predictions come out of event-time order by as much as the
outage lasted. An outcome therefore waits for its prediction until the *outcome* watermark is
``prediction_wait`` past it (a day by default), which bounds what an outage leaves pending; a prediction
that comes after its outcome, however late, is joined with it.
When every outcome partition is idle (quiet for the idle timeout and read to the end of its log, so no
outcome written to it is still unread: :mod:`streams.routing`), nothing in event time moves the outcome
watermark, so processing time does, safely: a plausible outcome is never more than ``past_tolerance``
older than its broker time, so none still to come lies before the monitor's clock less the past tolerance
(its clock standing in for the broker's). Predictions still expire, pending state stays bounded, and no
label that can still come is given up.

Expired predictions are resolved by config: counted as "no purchase" (the storefront's usual meaning) or
dropped as unlabelled. Either way they are reported as expired.

Duplicates. The monitor is at-least-once: after a crash it reads again what it had not committed, with
state that may already include it, and upstream services may send an event twice. A joined or expired
request therefore leaves a marker until both watermarks are two windows past it; a prediction or outcome
that finds a marker is a duplicate and is ignored. Markers are 64-bit hashes of the request ids, kept in
buckets of a second of event time and written a few records per batch, not per request
(:mod:`streams.markers`: they are most of the join's writes and memory otherwise). A replay that
comes after its marker is gone (a prediction is resolved again, as expired) is recognised downstream: each
version's windows remember their last ``dedupe_horizon`` request ids (:mod:`streams.tracker`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.metrics import request_counts
from streams.join_store import PendingStore, pending_outcome, pending_prediction, pending_shadow
from streams.labelled import Labelled, Paired
from streams.labelled import decode_bundle as decode_bundle  # re-exported: the join's output, read here
from streams.labelled import encode_bundle as encode_bundle
from streams.markers import MarkerRecord, Markers, request_hash
from streams.watermarks import ALL_IDLE, Clocks

Unlabelled = Literal["no_purchase", "drop"]

PREDICTION, OUTCOME = "prediction", "outcome"
#: A shadow candidate's prediction (``rec.predictions.shadow``): never a version's labelled request, only
#: one half of a pair with the incumbent's prediction of the same request (:class:`Paired`).
SHADOW = "shadow"
#: Markers are grouped by the prediction clock when they were set, in buckets of this many seconds, each
#: named by its first second. At a live pace a bucket's records cost more than its markers when buckets are
#: small (a second: 36 bytes a joined request at 50 a second and partition, 28 at ten seconds); an older
#: monitor's buckets, a second wide and named alike, are read as buckets of this width that start there,
#: so they are merged and forgotten at most this much later.
MARKER_BUCKET_S = 10
#: The expiry heaps are rebuilt from the pending requests once they hold more than three entries per
#: pending request plus this many (:meth:`Joiner._compact`).
HEAP_SLACK = 4096


def joinable_prediction(p: dict[str, Any], source: int = 0, kind: str = PREDICTION) -> dict[str, Any]:
    """What the join needs of a prediction event: its event time and what the counts need (the candidates,
    the recommended ones, the version), its user (a canary's arms are users), and the source partition it
    was read from. ``kind`` is :data:`SHADOW` for a shadow candidate's prediction."""
    ts = p.get("request_ts")
    return {
        "kind": kind,
        "user": str(p["user_id"]),
        "request_id": p["request_id"],
        "ts": int(p["ts"] if ts is None else ts),
        "version": p["model_version"],
        "candidates": list(p["scores"]),
        "recommended": p["recommended"],
        "source": source,
    }


def joinable_outcome(o: dict[str, Any], source: int = 0) -> dict[str, Any]:
    return {
        "kind": OUTCOME,
        "request_id": o["request_id"],
        "ts": int(o["ts"]),
        "purchased": o["purchased"],
        "source": source,
    }


@dataclass
class JoinStats:
    joined: int = 0
    outcome_first: int = 0
    expired: int = 0
    duplicates: int = 0
    orphan_outcomes: int = 0
    paired: int = 0  # shadow predictions labelled beside their incumbent's
    shadow_unpaired: int = 0  # shadow predictions whose request was resolved first, or never predicted

    def add(self, other: JoinStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Joiner:
    """The join of one partition of the repartitioned streams. Feed it joinable events (and the router's
    reports on the source partitions) in the partition's order; it returns labelled requests."""

    store: PendingStore
    label_window_ms: int
    unlabelled: Unlabelled = "no_purchase"
    out_of_order_ms: int = 0
    prediction_wait_ms: int = 86_400_000
    past_tolerance_ms: int = 3_600_000
    clocks: Clocks = field(default_factory=Clocks)
    stats: JoinStats = field(default_factory=JoinStats)
    # (ts, request_id) per kind; entries may be stale (the request moved on), so each is checked.
    _predictions: list[tuple[int, str]] = field(default_factory=list)
    _outcomes: list[tuple[int, str]] = field(default_factory=list)
    markers: Markers = field(default_factory=Markers)
    now_ms: int = -1  # the router's clock (processing time), as last reported
    #: Shadow pairs labelled since the caller last took them (:meth:`take_paired`).
    paired: list[Paired] = field(default_factory=list)

    # -- events ------------------------------------------------------------------------------------------

    def bundle(self, events: list[dict[str, Any]], reports: list[dict[str, Any]]) -> list[Labelled]:
        """One message of the joinable topic: its events joined, then the router's reports applied (they
        describe the sources after these events; applied first, they could close a window on an outcome
        of this very bundle). How many partitions each stream has is taken first, though: a joiner that
        has not heard it yet (a fresh one) would otherwise take the sources of this bundle's events for all
        of them, and one far-future timestamp among them would move a watermark for good."""
        for r in reports:
            self.clocks.stream(r["stream"]).expect(r["partitions"])
        out = [item for e in events for item in self.event(e)]
        for r in reports:
            out += self.report(r["stream"], r["partition"], r["latest"], r["idle"], r["partitions"], r["now"])
        return out

    def event(self, e: dict[str, Any]) -> list[Labelled]:
        if e["kind"] == SHADOW:
            return self.shadow(e)
        return self.prediction(e) if e["kind"] == PREDICTION else self.outcome(e)

    def shadow(self, s: dict[str, Any]) -> list[Labelled]:
        """A shadow candidate's prediction: it waits with its request's prediction or outcome (in the
        same pending entry, so a request with both halves and a shadow is one entry) and is labelled
        when its incumbent's prediction is. It moves no clock: the shadow thread lags the answers."""
        rid = s["request_id"]
        if request_hash(rid) in self.markers:
            # The request was labelled already: the shadow came after its outcome, too late to pair (a
            # later outcome cannot be had again). Never a label of its own, so nothing is biased.
            self.stats.shadow_unpaired += 1
            return []
        entry = self.store.get(rid)
        if entry is None:
            self.store.put(rid, {"kind": SHADOW, "ts": int(s["ts"]), "shadow": pending_shadow(s)})
            heapq.heappush(self._predictions, (int(s["ts"]), rid))
        elif "shadow" in entry:
            self.stats.duplicates += 1
        else:
            self.store.put(rid, {**entry, "shadow": pending_shadow(s)})
        return []

    def take_paired(self) -> list[Paired]:
        paired, self.paired = self.paired, []
        return paired

    def prediction(self, p: dict[str, Any]) -> list[Labelled]:
        """A joinable prediction (:func:`joinable_prediction`) whose event time is plausible."""
        rid, ts = p["request_id"], p["ts"]
        watermarks = self.clocks
        out: list[Labelled] = []
        key = request_hash(rid)
        marked = key in self.markers
        entry = None if marked else self.store.get(rid)
        pending = pending_prediction(p)
        if entry is not None and entry["kind"] == SHADOW:  # its shadow came first: they wait together
            pending["shadow"], entry = entry["shadow"], None
        if marked or (entry is not None and entry["kind"] == PREDICTION):
            self.stats.duplicates += 1
        elif entry is not None:
            self.stats.outcome_first += 1
            out.append(self._resolve(rid, pending, entry, key))
        elif ts + self.label_window_ms < watermarks.outcomes.watermark:
            # Every outcome within its window has been seen already, and none was this one's.
            out.append(self._resolve(rid, pending, None, key))
        else:
            self.store.put(rid, pending)
            heapq.heappush(self._predictions, (ts, rid))
        watermarks.predictions.observe(p.get("source", 0), ts)
        return out + self.advance()

    def outcome(self, o: dict[str, Any]) -> list[Labelled]:
        """A joinable outcome (:func:`joinable_outcome`) whose event time is plausible."""
        rid, ts = o["request_id"], o["ts"]
        watermarks = self.clocks
        out: list[Labelled] = []
        key = request_hash(rid)
        marked = key in self.markers
        entry = None if marked else self.store.get(rid)
        pending = pending_outcome(o)
        if entry is not None and entry["kind"] == SHADOW:  # only the shadow so far: they wait together
            pending["shadow"], entry = entry["shadow"], None
        if marked or (entry is not None and entry["kind"] == OUTCOME):
            self.stats.duplicates += 1
        elif entry is not None:
            out.append(self._resolve(rid, entry, pending, key))
        elif ts + self.prediction_wait_ms < watermarks.outcomes.watermark:
            # Its prediction would have come by now: nothing can be judged with it.
            self.stats.orphan_outcomes += 1
            self.stats.shadow_unpaired += "shadow" in pending
            self.store.delete(rid)
        else:
            self.store.put(rid, pending)
            heapq.heappush(self._outcomes, (ts, rid))
        watermarks.outcomes.observe(o.get("source", 0), ts)
        return out + self.advance()

    def report(
        self, stream: str, source: int, latest: int, idle: bool, partitions: int, now_ms: int = -1
    ) -> list[Labelled]:
        """The router's word on one source partition of ``stream`` (and its clock, ``now_ms``); returns what
        expired by it."""
        self.clocks.stream(stream).report(source, latest, idle, partitions)
        self.now_ms = max(self.now_ms, now_ms)
        return self.advance()

    def advance(self) -> list[Labelled]:
        """Move the watermarks as far as the source partitions allow; expire what they passed."""
        clocks, ooo = self.clocks, self.out_of_order_ms
        out: list[Labelled] = []
        predictions = clocks.predictions.candidate(ooo)
        # No fallback for the predictions: with every prediction partition idle (replicas down) its
        # watermark stays where it was.
        moved = predictions is not ALL_IDLE and clocks.predictions.advance(predictions)
        outcomes = clocks.outcomes.candidate(ooo)
        if outcomes is ALL_IDLE:
            # No outcome comes at all: none still to come is older than the clock less the past tolerance.
            outcomes = self.now_ms - self.past_tolerance_ms if self.now_ms >= 0 else -1
        if clocks.outcomes.advance(outcomes):
            out += self._expire_predictions()
            moved = True
        if moved:
            self._expire_outcomes()
            self._forget_markers()
        self._compact()
        return out

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _resolve(
        self, rid: str, pred: dict[str, Any], outcome: dict[str, Any] | None, key: int | None = None
    ) -> Labelled:
        """Label ``pred`` with ``outcome`` (``None``: the window closed without one), leave a marker
        (``key``: the request id's hash, when the caller has it already)."""
        ts = int(pred["ts"])
        self.store.delete(rid)
        # The bucket ends after ts: the marker outlives ts + 2 windows.
        key = request_hash(rid) if key is None else key
        second = max(self.clocks.predictions.watermark, ts) // 1000
        self.markers.mark(key, second - second % MARKER_BUCKET_S)
        version, candidates, recommended = pred["version"], pred["candidates"], pred["recommended"]
        user = str(pred.get("user", ""))
        shadow = pred.get("shadow") or (outcome or {}).get("shadow")
        if outcome is not None and int(outcome["ts"]) <= ts + self.label_window_ms:
            self.stats.joined += 1
            purchased = outcome["purchased"]
            labelled = Labelled(
                rid, version, ts, request_counts(candidates, recommended, purchased), False, user
            )
        else:
            self.stats.expired += 1
            purchased = () if self.unlabelled == "no_purchase" else None
            counts = None if purchased is None else request_counts(candidates, recommended, purchased)
            labelled = Labelled(rid, version, ts, counts, True, user)
        if shadow is not None and labelled.counts is not None:
            # The same outcome labels both answers: a paired observation of the two versions.
            self.stats.paired += 1
            shadow_counts = request_counts(shadow["candidates"], shadow["recommended"], purchased or ())
            self.paired.append(Paired(rid, ts, version, shadow["version"], labelled.counts, shadow_counts))
        elif shadow is not None:
            self.stats.shadow_unpaired += 1
        return labelled

    def _expire_predictions(self) -> list[Labelled]:
        out: list[Labelled] = []
        heap, closed = self._predictions, self.clocks.outcomes.watermark - self.label_window_ms
        while heap and heap[0][0] < closed:
            ts, rid = heapq.heappop(heap)
            entry = self.store.get(rid)
            if entry is not None and entry["kind"] == PREDICTION and entry["ts"] == ts:
                out.append(self._resolve(rid, entry, None))
            elif entry is not None and entry["kind"] == SHADOW and entry["ts"] == ts:
                self.store.delete(rid)  # the incumbent's prediction never came: nothing to pair with
                self.stats.shadow_unpaired += 1
        return out

    def _expire_outcomes(self) -> None:
        heap = self._outcomes
        given_up = self.clocks.outcomes.watermark - self.prediction_wait_ms
        while heap and heap[0][0] < given_up:
            ts, rid = heapq.heappop(heap)
            entry = self.store.get(rid)
            if entry is not None and entry["kind"] == OUTCOME and entry["ts"] == ts:
                self.store.delete(rid)
                self.stats.orphan_outcomes += 1
                self.stats.shadow_unpaired += "shadow" in entry

    def _compact(self) -> None:
        """Rebuild the expiry heaps without the entries of requests no longer pending, once those outnumber
        the pending ones. A request joined within seconds leaves its heap entry (a tuple and its id, ~170
        bytes) until its label window closes: half an hour of traffic by default, which was most of the
        monitor's memory growth at a steady rate (3 MB a minute at 300 requests/s). A pending request has
        at most two entries (a shadow's and its prediction's, or its outcome's), so a rebuild leaves at
        most two per pending request and the next needs as many new entries again plus
        :data:`HEAP_SLACK`: O(1) per request, amortized."""
        store = self.store
        if len(self._predictions) + len(self._outcomes) <= 3 * len(store) + HEAP_SLACK:
            return
        for heap in (self._predictions, self._outcomes):
            heap[:] = [entry for entry in heap if entry[1] in store]
            heapq.heapify(heap)

    def _forget_markers(self) -> None:
        markers = self.markers
        now = min(self.clocks.predictions.watermark, self.clocks.outcomes.watermark)
        while (oldest := markers.oldest()) is not None and (
            (oldest + MARKER_BUCKET_S) * 1000 + 2 * self.label_window_ms < now
        ):
            self.store.delete_markers(*markers.forget_oldest())

    def sync(self) -> None:
        """Write the markers added since the last call to the store (once per batch: a record per bucket
        touched, holding only the new ones), and each closed bucket written in several chunks as one."""
        for bucket, chunk, value in self.markers.unwritten():
            self.store.put_markers(bucket, chunk, value)
        # A bucket is closed once the prediction clock has passed its end: no marker goes there any more.
        closed = self.clocks.predictions.watermark // 1000 - MARKER_BUCKET_S + 1
        for bucket, merged, replaced in self.markers.merge_closed(closed):
            for chunk, value in merged:
                self.store.put_markers(bucket, chunk, value)
            self.store.delete_markers(bucket, replaced)

    def rebuild(
        self, entries: Iterable[tuple[str, dict[str, Any]]], markers: Iterable[MarkerRecord] = ()
    ) -> None:
        """Rebuild the expiry heaps and markers from the store's records of this partition (a restart)."""
        self._predictions, self._outcomes = [], []
        for rid, entry in entries:
            heap = self._outcomes if entry["kind"] == OUTCOME else self._predictions  # a shadow: predictions
            heap.append((int(entry["ts"]), rid))
        for heap in (self._predictions, self._outcomes):
            heapq.heapify(heap)
        self.markers = Markers.load(markers)

    def pending(self) -> int:
        """Requests waiting for their other half (markers excluded); heaps may hold stale entries."""
        return len(self._predictions) + len(self._outcomes)
