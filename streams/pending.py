"""The join's pending requests in the ``pending`` table, written a few records per batch, not per request.

Why. A request waits in the join from its first half to its second (or its window's end). Kept as one
table record per request, each labelled request cost the worker a changelog record set and another
deleted: two Kafka messages through Faust's producer, which a profile of the worker on a backlog put at a
third of its CPU. Here a batch writes its changes as *segments*: records ``b:<partition>:<seq>`` holding
the request ids the batch removed and the requests it added or changed, so a batch of a thousand
requests writes one or two records.

A segment's text is lines: the first a JSON array of the ids removed, then one ``[request_id, entry]``
per request added. In memory a pending request is where its line lies in its segment's text (the same
string the table holds), read when the join asks for it: no second copy, no Python object per request
beyond its index entry.

Reading the state back (a restart, a rebalance): the segments in ``seq`` order, each removing its ids
then adding its requests; a later line for an id replaces an earlier one. A segment is deleted once every
request it added has gone (removed, replaced, or moved on) *and* every older segment is deleted, so the
removals it records outlive what they remove. Old segments holding a few long-waiting requests (an
outcome waits up to ``prediction_wait_s`` for its prediction) would keep everything after them; so the
oldest segment's live requests are moved into the batch's new segments when at most half of its
requests are still live, or when the segments hold over twice the live requests (and some slack): each
move copies no more requests than have died since, so a request is written O(1) times.

Crash safety. A batch's records go out in order on one changelog partition (:meth:`PendingStore.flush`):
its segments, its markers, its clocks and next offset, then the deletions. Whatever prefix survives a
crash, the state read back is the previous batch's or this one's plus some of its effects, and the
clocks and offset are never ahead of the requests they account for. Removals come before the markers of
the requests they resolved: a removal without its marker (a crash in between) leaves a replayed outcome
pending, never a request labelled twice, because a removed request's labelled record was sent before the
batch's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from streams.markers import MarkerRecord, MarkerValue
from streams.watermarks import Clocks

#: A segment stops growing past this many bytes of UTF-8 (one request may take it over): under Kafka's 1 MB
#: message limit even if the table's JSON escaped every character of it (quotes), ~350 kB as it is.
SEGMENT_BYTES = 300_000
#: Live requests the segments may hold beyond twice the live ones before the oldest is moved on.
SLACK = 2_000

Table = Any  # a PartitionedTable, or a dict in tests


class PendingStore:
    """The join's pending store for one partition of the ``pending`` table, written back once per batch.

    Keys are ``b:<partition>:<seq>`` (segments of pending requests), ``r:<partition>:<request_id>`` (a
    pending request, as older monitors kept them: read, then moved into segments),
    ``m:<partition>:<bucket>:<chunk>`` (the markers a batch added to a bucket, :mod:`streams.markers`;
    ``m:<partition>:<bucket>`` from older monitors) and ``c:<partition>`` (the clocks, and the next
    offset of the joinable partition to process: :mod:`streams.offsets`).
    """

    def __init__(self, table: Table, partition: int) -> None:
        self.table = table
        self.partition = partition
        # Requests written: request_id -> (seq, start, end) of its line in its segment's text.
        self._index: dict[str, tuple[int, int, int]] = {}
        self._texts: dict[int, str] = {}  # seq -> text, in seq order (the table holds the same strings)
        self._members: dict[int, list[str]] = {}  # seq -> the ids it added
        self._live: dict[int, int] = {}  # seq -> how many of them still live there
        self._next_seq = 0
        # This batch's changes: requests added or changed (packed JSON), ids removed from segments.
        self._added: dict[str, bytes] = {}
        self._removed: list[str] = []
        self._markers: dict[str, MarkerValue | None] = {}  # full keys; None deletes
        self._legacy: list[str] = []  # older monitors' per-request keys, deleted at the next flush
        self.written_offset: int | None = None  # the next offset in the last clocks record written

    # -- the join's view ---------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        packed = self._added.get(key)
        if packed is not None:
            return _loads(packed)
        where = self._index.get(key)
        if where is None:
            return None
        seq, start, end = where
        line: list[Any] = orjson.loads(self._texts[seq][start:end])
        entry: dict[str, Any] = line[1]
        return entry

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._unhome(key)
        self._added[key] = orjson.dumps(value)

    def delete(self, key: str) -> None:
        self._added.pop(key, None)
        self._unhome(key)

    def _unhome(self, key: str) -> None:
        """``key``'s written copy is no longer its value: record the removal (a replacement in the same
        batch is added after it)."""
        where = self._index.pop(key, None)
        if where is not None:
            self._live[where[0]] -= 1
            self._removed.append(key)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return [(k, entry) for k in [*self._index, *self._added] if (entry := self.get(k)) is not None]

    def __len__(self) -> int:
        return len(self._index) + len(self._added)  # a key is in one or the other

    def __contains__(self, key: str) -> bool:
        return key in self._added or key in self._index

    def put_markers(self, bucket: int, chunk: int, value: MarkerValue) -> None:
        self._markers[_marker_key(self.partition, bucket, chunk)] = value

    def delete_markers(self, bucket: int, chunks: list[int | None]) -> None:
        for chunk in chunks:
            self._markers[_marker_key(self.partition, bucket, chunk)] = None

    def marker_records(self) -> list[MarkerRecord]:
        prefix = f"m:{self.partition}:"
        return [marker_record(k[len(prefix) :], v) for k, v in self.table.items() if k.startswith(prefix)]

    @property
    def segments(self) -> int:
        return len(self._texts)

    # -- writing -----------------------------------------------------------------------------------------

    def flush(self, clocks: Clocks, next_offset: int | None = None) -> None:
        """Write the batch's records; ``next_offset``: the joinable partition's offset after the batch."""
        self._compact()
        changed = self._added or self._removed or self._markers or self._legacy or self._dead_prefix()
        if not changed and next_offset == self.written_offset:
            return
        table = self.table
        table.writing_partition = self.partition
        for seq, text in self._segments():
            table[self._key(seq)] = text
        deleted = [key for key, value in self._markers.items() if value is None]
        for key, value in self._markers.items():
            if value is not None:
                table[key] = value
        record = clocks.as_dict()
        if next_offset is not None:
            record["next_offset"] = next_offset
        table[f"c:{self.partition}"] = record
        self.written_offset = next_offset
        for seq in self._dead_prefix():
            deleted.append(self._key(seq))
            del self._texts[seq], self._members[seq], self._live[seq]
        for key in [*deleted, *self._legacy]:
            if key in table:
                del table[key]
        self._markers.clear()
        self._legacy.clear()

    def _key(self, seq: int) -> str:
        return f"b:{self.partition}:{seq}"

    def _segments(self) -> Iterator[tuple[int, str]]:
        """This batch's segments, each taken into the index as it is made: removals first, then additions
        (a request replaced in this batch is removed in an earlier segment or line than it is added)."""
        removed, added = self._removed, self._added
        self._removed, self._added = [], {}
        if not removed and not added:
            return
        *alone, head = _removals(removed)
        for piece in alone:
            yield self._segment(piece, [], [])
        lines: list[str] = []
        rids: list[str] = []
        size = len(head.encode())
        for rid, packed in added.items():
            line = b"[" + orjson.dumps(rid) + b"," + packed + b"]"
            if lines and size + len(line) > SEGMENT_BYTES:
                yield self._segment(head, lines, rids)
                head, lines, rids, size = "[]", [], [], 2
            lines.append(line.decode())  # located in characters: the table holds a str
            rids.append(rid)
            size += len(line) + 1
        yield self._segment(head, lines, rids)

    def _segment(self, head: str, lines: list[str], rids: list[str]) -> tuple[int, str]:
        seq = self._next_seq
        self._next_seq += 1
        text = "\n".join([head, *lines])
        self._take(seq, text, rids, [len(line) for line in lines], len(head))
        return seq, text

    def _take(self, seq: int, text: str, rids: list[str], lengths: list[int], start: int) -> None:
        """Index segment ``seq``: ``rids`` added in lines of ``lengths`` (characters) after its first."""
        index, live = self._index, self._live
        self._texts[seq], self._members[seq], live[seq] = text, rids, 0
        for rid, length in zip(rids, lengths, strict=True):
            start += 1  # the newline before the line
            old = index.get(rid)
            if old is not None:
                live[old[0]] -= 1
            index[rid] = (seq, start, start + length)
            live[seq] += 1
            start += length

    def _compact(self) -> None:
        """Move the oldest segments' live requests into this batch's when they hold the rest back."""
        stored = sum(len(m) for m in self._members.values())
        pending = len(self._index) + len(self._added)
        index, live_in = self._index, self._live
        for seq, members in self._members.items():
            live = live_in[seq]
            if live and 2 * live > len(members) and stored <= 2 * pending + SLACK:
                return
            stored -= len(members) - live  # its live requests are written again, the rest dropped
            if not live:
                continue
            text = self._texts[seq]
            for rid in members:
                where = index.get(rid)
                if where is not None and where[0] == seq:
                    del index[rid]
                    line: list[Any] = orjson.loads(text[where[1] : where[2]])
                    self._added[rid] = orjson.dumps(line[1])
            live_in[seq] = 0

    def _dead_prefix(self) -> list[int]:
        dead = []
        for seq, live in self._live.items():
            if live:
                break
            dead.append(seq)
        return dead

    # -- reading back ------------------------------------------------------------------------------------

    def restore(self) -> PendingStore:
        """Read this partition's pending requests from the table (after recovery); returns ``self``."""
        segments, prefix, legacy = [], f"b:{self.partition}:", f"r:{self.partition}:"
        for key, value in self.table.items():
            if key.startswith(prefix):
                segments.append((int(key[len(prefix) :]), value))
            elif key.startswith(legacy):
                # An older monitor's request: older than any segment, rewritten into one at the next flush.
                self._added[key[len(legacy) :]] = orjson.dumps(_readable(_unpacked(value)))
                self._legacy.append(key)
        for seq, text in sorted(segments):
            lines = text.split("\n")
            for rid in orjson.loads(lines[0]):
                self._added.pop(rid, None)
                self._unhome(rid)
            self._removed.clear()  # read back, not this batch's
            parsed = [orjson.loads(line)[0] for line in lines[1:]]
            for rid in parsed:
                self._added.pop(rid, None)
            self._take(seq, text, parsed, [len(line) for line in lines[1:]], len(lines[0]))
            self._next_seq = seq + 1
        return self


def _removals(removed: list[str]) -> list[str]:
    """The first lines of a batch's segments: its removals, in pieces of at most SEGMENT_BYTES."""
    pieces: list[str] = []
    start = 0
    while start < len(removed):
        piece = orjson.dumps(removed[start : start + 4096])
        step = 4096
        while len(piece) > SEGMENT_BYTES and step > 1:
            step //= 2
            piece = orjson.dumps(removed[start : start + step])
        pieces.append(piece.decode())
        start += step
    return pieces or ["[]"]


def restored_stores(table: Table) -> dict[int, PendingStore]:
    """A store per partition with pending state in ``table``, read back."""
    partitions = {int(key.split(":", 2)[1]) for key in table if key[:2] in ("b:", "r:")}
    return {p: PendingStore(table, p).restore() for p in sorted(partitions)}


def _marker_key(partition: int, bucket: int, chunk: int | None) -> str:
    return f"m:{partition}:{bucket}" if chunk is None else f"m:{partition}:{bucket}:{chunk}"


def marker_record(where: str, value: MarkerValue) -> MarkerRecord:
    """A marker record from what follows ``m:<partition>:`` in its key: ``<bucket>:<chunk>``, or an older
    monitor's ``<bucket>``."""
    bucket, _, chunk = where.partition(":")
    return int(bucket), (int(chunk) if chunk else None), value


def _loads(packed: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = orjson.loads(packed)
    return entry


def _unpacked(value: Any) -> Any:
    """A pending request from an older monitor's record: packed (its JSON as a string), or a dict."""
    return orjson.loads(value) if isinstance(value, str) else value


def _readable(entry: dict[str, Any]) -> dict[str, Any]:
    """A pending request as this monitor writes it, from what an older one wrote (single-letter fields)."""
    if "kind" in entry:
        return entry
    if entry.get("k") == "p":
        return {"kind": "prediction", "ts": entry["ts"], "version": entry["v"], "candidates": entry["c"],
                "recommended": entry["r"]}  # fmt: skip
    return {"kind": "outcome", "ts": entry["ts"], "purchased": entry["b"]}
