"""Rolling windows over a model version's labelled requests: the last N requests, and the last T seconds.

Both follow river's rolling-metric contract: a window adds a request's item-level :class:`Counts` when the
request enters and subtracts them when it leaves, so a window's metrics cost O(1) to read, however large
it is. Counts are integers, so the rolled sum is exact and the metrics equal scikit-learn's on the window's
concatenated item labels (``schemas/metrics.py`` defines them once).

The time window is event time: it holds the requests whose ``ts`` is in ``(max_ts - T, max_ts]``, where
``max_ts`` is the latest ``ts`` the version has seen. Requests arrive out of order (they are joined on
several partitions), so the window evicts by ``ts`` with a heap; a request older than the window when it
arrives never enters it.
"""

from __future__ import annotations

import base64
import heapq
import struct
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.metrics import Counts
from streams.markers import request_hash


@dataclass(frozen=True, slots=True)
class Entry:
    """One labelled request as the windows keep it."""

    seq: int  # position in the version's stream of labelled requests, from 1
    ts: int  # the prediction's event time, ms
    key: int  # the request id's 64-bit hash (streams.markers.request_hash): what replay dedupe compares
    counts: Counts
    expired: bool = False  # no outcome came within the label window: counted as "no purchase"

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> Entry:
        """An entry from an older monitor's block row: ``[seq, ts, request_id, tp, fp, fn, tn, expired]``."""
        seq, ts, rid, tp, fp, fn, tn = row[:7]
        expired = bool(row[7]) if len(row) > 7 else False  # rows written before the field: labelled
        return cls(
            int(seq), int(ts), request_hash(str(rid)), Counts(int(tp), int(fp), int(fn), int(tn)), expired
        )


#: A block's entries as stored (:func:`encode_entries`): seq, ts, key, tp, fp, fn, tn, expired, little-endian.
_ROW = struct.Struct("<qqQiiiiB")


def encode_entries(entries: Sequence[Entry]) -> str:
    """Entries as one base64 string of fixed-size rows: 55 characters a request in the ``windows`` table (and
    in memory), rather than a list of eight Python objects."""
    pack = _ROW.pack
    rows = b"".join(
        pack(e.seq, e.ts, e.key, e.counts.tp, e.counts.fp, e.counts.fn, e.counts.tn, e.expired)
        for e in entries
    )
    return base64.b64encode(rows).decode("ascii")


def decode_entries(text: str) -> list[Entry]:
    return [
        Entry(seq, ts, key, Counts(tp, fp, fn, tn), bool(expired))
        for seq, ts, key, tp, fp, fn, tn, expired in _ROW.iter_unpack(base64.b64decode(text))
    ]


class CountWindow:
    """The last ``size`` labelled requests."""

    kind = "count"

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: deque[Entry] = deque()
        self.counts = Counts()
        self.expired = 0  # of the requests inside: how many expired rather than met their outcome

    def add(self, entry: Entry) -> Entry | None:
        """Add ``entry``; return the request it pushed out, if any."""
        self.entries.append(entry)
        self.counts = self.counts + entry.counts
        self.expired += entry.expired
        if len(self.entries) > self.size:
            old = self.entries.popleft()
            self.counts = self.counts - old.counts
            self.expired -= old.expired
            return old
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def oldest_seq(self) -> int | None:
        return self.entries[0].seq if self.entries else None


#: Heap keys of the time window are ``ts * _SEQS + seq``: ordered by event time, then position.
_SEQS = 2**44
_INSIDE, _EXPIRED = 1, 2  # flags of a time window's column


class TimeWindow:
    """The labelled requests of the last ``size_s`` seconds of event time.

    Kept in columns, as it may hold hours of traffic: per request its ts, counts and flags in arrays indexed
    by position (25 bytes), and one int in the heap that evicts by event time; about 75 bytes a request in
    all, where an :class:`Entry` and its bookkeeping took some 500.
    """

    kind = "time"

    def __init__(self, size_s: int, max_ts: int | None = None) -> None:
        self.size_s = size_s
        self.span_ms = size_s * 1000
        self.max_ts = max_ts
        self.counts = Counts()
        self.expired = 0  # of the requests inside: how many expired rather than met their outcome
        self._heap: list[int] = []  # ts * _SEQS + seq: evicts oldest event time first
        # Columns by position from _first; requests that left stay until the front passes them: the front
        # answers "which is the earliest request still inside", which decides what state may be dropped.
        self._first = 0  # the seq of index 0
        self._front = 0  # index of the earliest request that may still be inside
        self._ts = array("q")
        self._counts = array("i")  # tp, fp, fn, tn per request
        self._flags = array("B")

    @property
    def cutoff(self) -> int | None:
        """Requests at or before this ts are outside the window."""
        return None if self.max_ts is None else self.max_ts - self.span_ms

    def add(self, entry: Entry) -> bool:
        """Add ``entry`` (positions come in order); whether it entered (not when it is already too old)."""
        if self.max_ts is None or entry.ts > self.max_ts:
            self.max_ts = entry.ts
        cutoff = self.max_ts - self.span_ms
        entered = entry.ts > cutoff
        if entered:
            self._append(entry)
            heapq.heappush(self._heap, entry.ts * _SEQS + entry.seq)
            self.counts = self.counts + entry.counts
            self.expired += entry.expired
        heap, flags, counts = self._heap, self._flags, self._counts
        while heap and heap[0] // _SEQS <= cutoff:
            i = heapq.heappop(heap) % _SEQS - self._first
            c = 4 * i
            self.counts = self.counts - Counts(counts[c], counts[c + 1], counts[c + 2], counts[c + 3])
            self.expired -= bool(flags[i] & _EXPIRED)
            flags[i] = 0
        n = len(flags)
        while self._front < n and not flags[self._front]:
            self._front += 1
        if self._front > 4096 and 2 * self._front > n:  # drop the front that left, in one move
            front = self._front
            del self._ts[:front], self._counts[: 4 * front], self._flags[:front]
            self._first += front
            self._front = 0
        return entered

    def _append(self, entry: Entry) -> None:
        if self._front == len(self._flags):  # nothing inside: start the columns at this position
            self._ts, self._counts, self._flags = array("q"), array("i"), array("B")
            self._first, self._front = entry.seq, 0
        gap = entry.seq - self._first - len(self._flags)
        if gap < 0:
            raise ValueError(f"position {entry.seq} added after {self._first + len(self._flags) - 1}")
        if gap:  # requests that never entered: empty rows
            self._ts.extend(array("q", bytes(8 * gap)))
            self._counts.extend(array("i", bytes(16 * gap)))
            self._flags.extend(array("B", bytes(gap)))
        c = entry.counts
        self._ts.append(entry.ts)
        self._counts.extend((c.tp, c.fp, c.fn, c.tn))
        self._flags.append(_INSIDE | (_EXPIRED if entry.expired else 0))

    def __len__(self) -> int:
        return len(self._heap)

    def oldest_seq(self) -> int | None:
        return self._first + self._front if self._front < len(self._flags) else None


class ServingWindows:
    """A version's answered and failed requests, for its error rate (failed / (failed + answered)).

    Answered requests are its labelled requests, as the windows above count them; failed ones are the
    model failures the prediction service dead-lettered with the version's name. The count window is the
    last ``size`` of them in the order they reach the monitor; the time window holds those of the last
    ``span_s`` seconds of event time, in one-second buckets (the rate needs no more precision than that,
    and the buckets persist in a few hundred numbers). A failure is known by its request id while it is in
    the count window, so a dead letter delivered twice counts once.
    """

    def __init__(self, size: int, span_s: int) -> None:
        self.size = size
        self.span_s = span_s
        self.recent: deque[str] = deque()  # "" for an answered request, the request id for a failed one
        self.failed_ids: set[str] = set()
        self.buckets: dict[int, list[int]] = {}  # second of event time -> [answered, failed]
        self.max_s: int | None = None

    def add(self, ts: int, failed_id: str | None = None) -> bool:
        """Count one request (failed if ``failed_id`` is given); False for a failure counted before."""
        if failed_id is not None:
            if failed_id in self.failed_ids:
                return False
            self.failed_ids.add(failed_id)
        self.recent.append(failed_id or "")
        if len(self.recent) > self.size:
            self.failed_ids.discard(self.recent.popleft())
        second = ts // 1000
        if self.max_s is None or second > self.max_s:
            self.max_s = second
            for old in [s for s in self.buckets if s <= second - self.span_s]:
                del self.buckets[old]
        if second > self.max_s - self.span_s:
            self.buckets.setdefault(second, [0, 0])[failed_id is not None] += 1
        return True

    def rate(self, kind: str) -> tuple[float | None, int]:
        """(error rate, requests) of the count or the time window; the rate is None with no request."""
        if kind == "count":
            n, failed = len(self.recent), len(self.failed_ids)
        else:
            n = sum(a + f for a, f in self.buckets.values())
            failed = sum(f for _a, f in self.buckets.values())
        return (failed / n if n else None), n

    def as_dict(self) -> dict[str, Any]:
        rows: list[int | str] = []  # runs of answered requests as their length, failures as their ids
        for rid in self.recent:
            if rid:
                rows.append(rid)
            elif rows and isinstance(rows[-1], int):
                rows[-1] += 1
            else:
                rows.append(1)
        buckets = [[s, a, f] for s, (a, f) in sorted(self.buckets.items())]
        return {"recent": rows, "buckets": buckets, "max_s": self.max_s}

    @classmethod
    def from_dict(cls, size: int, span_s: int, d: dict[str, Any]) -> ServingWindows:
        out = cls(size, span_s)
        for row in d["recent"]:
            if isinstance(row, int):
                out.recent.extend([""] * row)
            else:
                out.recent.append(row)
                out.failed_ids.add(row)
        out.buckets = {int(s): [int(a), int(f)] for s, a, f in d["buckets"]}
        out.max_s = d["max_s"]
        return out
