"""An experiment's defence against the join's replays: the requests its comparison counted lately.

The join sends a batch's labelled requests (and an experiment's evidence) *before* it writes the markers
and offsets that say it did (:mod:`streams.join`, at-least-once): a monitor killed in between replays that
batch after its restart, and sends the same requests again, in a new message of the labelled topic. The
watch's offset check (:class:`streams.experiments.Run`) cannot tell, since the message is new; a version's
windows recognise such a replay by request id (:mod:`streams.tracker`). An experiment's comparison does the
same here: each evidence row carries its request id, and a request counted once is never counted again.

What to remember, and how long. A replay resends what the join did after its last state write: a batch or
two, sent when the monitor's event-time clock stood where it stands at the crash. So the hashes are kept in
buckets of the *run's clock when they were counted* (:data:`BUCKET_MS` of event time, the clock the
evidence carries: the join's watermark) and forgotten once that clock is :data:`HORIZON_MS` past them:
ten minutes of event time, a hundred times what a replay spans. They are 64-bit hashes of the ids, kept
and written as the join keeps its markers (:class:`streams.markers.Markers`: a record per bucket touched
per evaluation, holding only the new ones), in the ``windows`` table beside the run's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from streams.markers import MarkerRecord, Markers, MarkerValue, request_hash

#: Buckets of the run's event-time clock, in ms.
BUCKET_MS = 10_000
#: How far behind the run's clock a counted request is still recognised, in ms of event time.
HORIZON_MS = 600_000

#: A record to write in the ``windows`` table: (key, value, or ``None`` to delete it).
Record = tuple[str, MarkerValue | None]


class CountedRequests:
    """The requests one experiment's comparison counted within :data:`HORIZON_MS` of its clock."""

    def __init__(self, key: str, markers: Markers | None = None) -> None:
        self.key = key  # the run's key prefix in the table: ``experiment:<id>``
        self.markers = markers or Markers()

    @classmethod
    def load(cls, key: str, records: Iterable[MarkerRecord]) -> CountedRequests:
        return cls(key, Markers.load(records))

    def fresh(self, request_ids: Iterable[str], clock_ms: int) -> list[bool]:
        """Whether each request is new (and remember it as counted, at ``clock_ms``); a repeat within the
        message itself is not new either."""
        bucket = max(clock_ms, 0) // BUCKET_MS
        out = []
        for rid in request_ids:
            h = request_hash(rid)
            new = h not in self.markers
            if new:
                self.markers.mark(h, bucket)
            out.append(new)
        return out

    def changes(self, clock_ms: int | None) -> list[Record]:
        """The records to write now: the hashes counted since the last call, and the buckets the clock
        has left :data:`HORIZON_MS` behind, deleted."""
        out: list[Record] = [
            (self.record_key(bucket, chunk), value) for bucket, chunk, value in self.markers.unwritten()
        ]
        if clock_ms is not None:
            out += self._forget(lambda bucket: (bucket + 1) * BUCKET_MS + HORIZON_MS < clock_ms)
        return out

    def clear(self) -> list[Record]:
        """Forget everything (the experiment ended): the records to delete."""
        self.markers.unwritten()  # nothing more to write
        return self._forget(lambda _bucket: True)

    def _forget(self, old: Callable[[int], bool]) -> list[Record]:
        out: list[Record] = []
        while (oldest := self.markers.oldest()) is not None and old(oldest):
            bucket, chunks = self.markers.forget_oldest()
            out += [(self.record_key(bucket, chunk), None) for chunk in chunks]
        return out

    def record_key(self, bucket: int, chunk: int | None) -> str:
        return f"{self.key}|seen|{bucket}|{chunk}"

    @staticmethod
    def parse_key(key: str) -> tuple[str, int, int] | None:
        """(the run's key prefix, bucket, chunk) of one of these records' keys, else ``None``."""
        prefix, seen, bucket, chunk = [*key.rsplit("|", 3), "", "", ""][:4]
        if seen != "seen" or not bucket.isdigit() or not chunk.isdigit():
            return None
        return prefix, int(bucket), int(chunk)

    def __len__(self) -> int:
        return len(self.markers)
