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

import heapq
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.metrics import Counts


@dataclass(frozen=True, slots=True)
class Entry:
    """One labelled request as the windows keep it."""

    seq: int  # position in the version's stream of labelled requests, from 1
    ts: int  # the prediction's event time, ms
    request_id: str
    counts: Counts
    expired: bool = False  # no outcome came within the label window: counted as "no purchase"

    def as_list(self) -> list[object]:
        c = self.counts
        return [self.seq, self.ts, self.request_id, c.tp, c.fp, c.fn, c.tn, int(self.expired)]

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> Entry:
        seq, ts, rid, tp, fp, fn, tn = row[:7]
        expired = bool(row[7]) if len(row) > 7 else False  # rows written before the field: labelled
        return cls(int(seq), int(ts), str(rid), Counts(int(tp), int(fp), int(fn), int(tn)), expired)


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


class TimeWindow:
    """The labelled requests of the last ``size_s`` seconds of event time."""

    kind = "time"

    def __init__(self, size_s: int, max_ts: int | None = None) -> None:
        self.size_s = size_s
        self.span_ms = size_s * 1000
        self.max_ts = max_ts
        self.counts = Counts()
        self.expired = 0  # of the requests inside: how many expired rather than met their outcome
        self._by_ts: list[tuple[int, int, Entry]] = []  # (ts, seq, entry): evicts oldest event time first
        # Members in arrival order, with evicted ones left in place until they reach the front: it only
        # answers "which is the earliest request still inside", which decides what state may be dropped.
        self._by_seq: deque[Entry] = deque()
        self._inside: set[int] = set()

    @property
    def cutoff(self) -> int | None:
        """Requests at or before this ts are outside the window."""
        return None if self.max_ts is None else self.max_ts - self.span_ms

    def add(self, entry: Entry) -> tuple[bool, list[Entry]]:
        """Add ``entry``: whether it entered (not when it is already too old), and the requests that left."""
        if self.max_ts is None or entry.ts > self.max_ts:
            self.max_ts = entry.ts
        cutoff = self.max_ts - self.span_ms
        entered = entry.ts > cutoff
        if entered:
            heapq.heappush(self._by_ts, (entry.ts, entry.seq, entry))
            self._by_seq.append(entry)
            self._inside.add(entry.seq)
            self.counts = self.counts + entry.counts
            self.expired += entry.expired
        left: list[Entry] = []
        while self._by_ts and self._by_ts[0][0] <= cutoff:
            old = heapq.heappop(self._by_ts)[2]
            self._inside.discard(old.seq)
            self.counts = self.counts - old.counts
            self.expired -= old.expired
            left.append(old)
        while self._by_seq and self._by_seq[0].seq not in self._inside:
            self._by_seq.popleft()
        return entered, left

    def __len__(self) -> int:
        return len(self._by_ts)

    def __iter__(self) -> Iterator[Entry]:
        return (e for _, _, e in self._by_ts)

    def oldest_seq(self) -> int | None:
        return self._by_seq[0].seq if self._by_seq else None


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
