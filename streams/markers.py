"""The join's markers, kept compactly: the requests joined or expired lately, as 64-bit hashes of their ids.

A marker lives until both watermarks are two label windows past its request (:mod:`streams.join`): at the
storefront's pace that is an hour of traffic, a million requests at 300/s. Kept as a Python ``str`` in a
dict and in a list per bucket (and a copy of the list in the table), a marker cost some 200 bytes and the
monitor's memory grew with traffic times hours. Here a marker is an 8-byte hash in one :class:`HashSet`
(sorted shards of 8-byte hashes) and its 11 characters of base64 in its bucket's record, the string the
table holds: about 20 bytes each (tracemalloc, 100,000 markers; 39 with a half-full open-addressing table
and an array per bucket beside the table, before), and no Python object per request. Marking, looking up
and forgetting cost O(1) per request, amortized: a shard holds a few hundred members (a binary search; an
insertion moves its tail), and the shards' doubling copies each member once; forgetting a bucket decodes
its records once.

Hash collisions. Two different request ids with the same 64-bit hash would make the second look like a
replay of the first while the first's marker lives: with ``n`` markers live, a new request collides with
probability ``n / 2**63`` (hashes below 2 are moved up, so 2**64 - 2 values), about 1e-13 for a million
markers, a lost request every ~10**13 at that load.

Persistence: each batch writes the markers it added, one record per bucket touched (:meth:`Markers.unwritten`,
a *chunk* of that bucket), rather than writing every bucket it touched again in full; forgetting a bucket
deletes its chunks. A chunk is the base64 of its hashes (little-endian uint64s), a bare string: the table's
dict per record, held for an hour, cost more than the hashes it wrapped. An older monitor's chunk
(``{"h": <base64>}``) and bucket (``{"ids": [...]}``) are read too.

At a live pace a batch holds a few markers, and a bucket (ten seconds of traffic) gets a chunk from each
of the batches that touch it: the records' keys and dicts then cost more than the markers (118 bytes a
request in all at 5 a batch, against 56 at 50, with buckets of a second). So once a bucket is *closed*
(the prediction clock is past it: no marker goes there any more) its chunks are written again as one
(:meth:`Markers.merge_closed`; several past :data:`MERGED_MARKERS`, for Kafka's message limit) and
deleted, once per bucket. The merged record goes to the changelog before the deletions: a crash in
between leaves the bucket's markers twice: the set takes them once, and the next merge writes them once.
A merged bucket's record, its key and its entries still cost ~900 bytes whatever it holds, so buckets are
ten seconds wide, not one (:data:`streams.join.MARKER_BUCKET_S`): at 50 requests a second and partition a
joined request leaves 28 bytes rather than 36.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

EMPTY, DELETED = 0, 1  # values no hash takes (stored hashes keep that rule): EMPTY is a gap in SeqHashes
#: A :class:`HashSet`'s shards double when they hold this many members on average.
SHARD_MEMBERS = 512
#: A merged chunk holds at most this many markers (300 kB of base64, as a pending segment: under Kafka's
#: 1 MB message limit); a closed bucket that holds more is merged into several.
MERGED_MARKERS = 300_000 // 11

#: A stored chunk of markers: the base64 of its hashes (little-endian uint64s), or an older monitor's
#: ``{"h": <that base64>}`` or ``{"ids": [...]}`` (a whole bucket).
MarkerValue = str | dict[str, Any]
#: A stored marker record: (bucket, chunk, value); chunk ``None`` for an older monitor's whole bucket.
MarkerRecord = tuple[int, int | None, MarkerValue]


def request_hash(request_id: str) -> int:
    """A stable 64-bit hash of a request id (stable across processes: it is persisted), never 0 or 1."""
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
    return h if h > DELETED else h + 2


def encode_hashes(hashes: array[int]) -> str:
    data = hashes if sys.byteorder == "little" else _swapped(hashes)
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_hashes(value: MarkerValue) -> array[int]:
    if isinstance(value, dict):  # an older monitor's chunk: in a dict, or the ids themselves
        if "ids" in value:
            return array("Q", (request_hash(str(rid)) for rid in value["ids"]))
        value = str(value["h"])
    hashes = array("Q", base64.b64decode(value))
    return hashes if sys.byteorder == "little" else _swapped(hashes)


def _swapped(hashes: array[int]) -> array[int]:
    out = array("Q", hashes)
    out.byteswap()
    return out


class HashSet:
    """A set of 64-bit hashes in sorted ``array('Q')`` shards, by a hash's top bits: 8 bytes a member plus
    the arrays' headroom (about 6%) and a header per shard of 256 to 512 members on average, no Python
    object per member. A lookup is a binary search in one shard; adding or removing a member moves the
    shard's tail (a few kB); the shards double (each split in two, O(n) once per doubling) when they
    average :data:`SHARD_MEMBERS`, and are not merged again when the set shrinks (an empty one is
    freed). An open-addressing table kept at most half full, before, cost 2 to 4 slots (16 to 32 bytes) a
    member and grew in doublings of the whole table."""

    def __init__(self) -> None:
        self._shards: list[array[int] | None] = [None]
        self._bits = 0  # 2**bits shards, by a hash's top bits
        self._shift = 64
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def __contains__(self, h: int) -> bool:
        shard = self._shards[h >> self._shift]
        if shard is None:
            return False
        i = bisect_left(shard, h)
        return i < len(shard) and shard[i] == h

    def add(self, h: int) -> None:
        k = h >> self._shift
        shard = self._shards[k]
        if shard is None:
            shard = self._shards[k] = array("Q")
        i = bisect_left(shard, h)
        if i < len(shard) and shard[i] == h:
            return
        shard.insert(i, h)
        self.live += 1
        if self.live > SHARD_MEMBERS << self._bits:
            self._split()

    def discard(self, h: int) -> None:
        k = h >> self._shift
        shard = self._shards[k]
        if shard is None:
            return
        i = bisect_left(shard, h)
        if i < len(shard) and shard[i] == h:
            del shard[i]
            self.live -= 1
            if not shard:
                self._shards[k] = None  # its header too: a set emptied of a burst holds little

    def _split(self) -> None:
        """Twice the shards: each in two, by the next bit."""
        self._bits += 1
        self._shift = shift = 64 - self._bits
        shards: list[array[int] | None] = [None] * (1 << self._bits)
        for k, shard in enumerate(self._shards):
            if shard is not None:
                cut = bisect_left(shard, (2 * k + 1) << shift)
                shards[2 * k], shards[2 * k + 1] = shard[:cut] or None, shard[cut:] or None
        self._shards = shards


class Markers:
    """The markers of one join partition, in buckets of the prediction clock (:data:`streams.join.
    MARKER_BUCKET_S`), forgotten a bucket at a time.

    A bucket's hashes are kept twice: in the set (to look them up) and in the records written for it,
    which are the very strings the table holds (:meth:`unwritten` returns them; :meth:`load` keeps what
    the table gives back), not a copy: forgetting a bucket decodes them to take its hashes out of the set."""

    def __init__(self) -> None:
        self._set = HashSet()
        self._order: list[int] = []  # a heap of the buckets' numbers
        self._chunks: dict[int, dict[int | None, MarkerValue]] = {}  # each bucket's records in the store
        self._unwritten: dict[int, array[int]] = {}  # hashes marked since the last write, by bucket
        self._split: set[int] = set()  # buckets in more than one chunk in the store

    def __contains__(self, h: int) -> bool:
        return h in self._set

    def __len__(self) -> int:
        return len(self._set)

    def mark(self, h: int, bucket: int) -> None:
        if bucket not in self._chunks:
            self._chunks[bucket] = {}
            heapq.heappush(self._order, bucket)
        self._unwritten.setdefault(bucket, array("Q")).append(h)
        self._set.add(h)

    def oldest(self) -> int | None:
        return self._order[0] if self._order else None

    def forget_oldest(self) -> tuple[int, list[int | None]]:
        """Forget the oldest bucket; return it and its chunks in the store (to delete)."""
        bucket = heapq.heappop(self._order)
        chunks = self._chunks.pop(bucket, {})
        for hashes in [self._unwritten.pop(bucket, ()), *map(decode_hashes, chunks.values())]:
            for h in hashes:
                self._set.discard(h)
        self._split.discard(bucket)
        return bucket, list(chunks)

    def unwritten(self) -> list[tuple[int, int, str]]:
        """The records to write for the markers added since the last call: (bucket, chunk, value)."""
        out = []
        for bucket in sorted(self._unwritten):
            chunks = self._chunks[bucket]
            chunk = _next_chunk(chunks)
            chunks[chunk] = value = encode_hashes(self._unwritten[bucket])
            if len(chunks) > 1:
                self._split.add(bucket)
            out.append((bucket, chunk, value))
        self._unwritten.clear()
        return out

    def merge_closed(self, before: int) -> list[tuple[int, list[tuple[int, str]], list[int | None]]]:
        """Each bucket below ``before`` (closed: no marker goes there any more) that the store holds in
        more chunks than it needs, as few as it needs (one, unless it holds more than
        :data:`MERGED_MARKERS`): (bucket, its new chunks and their values, the chunks to delete). Call it
        after :meth:`unwritten`, whose chunks it may replace."""
        out = []
        for bucket in sorted(b for b in self._split if b < before):
            self._split.discard(bucket)
            replaced = self._chunks[bucket]
            hashes = array("Q")
            for value in replaced.values():
                hashes.extend(decode_hashes(value))
            if len(set(hashes)) < len(hashes):  # a merge cut short by a crash left some in two chunks
                hashes = array("Q", dict.fromkeys(hashes))
            first = _next_chunk(replaced)
            merged = [
                (first + i, encode_hashes(hashes[at : at + MERGED_MARKERS]))
                for i, at in enumerate(range(0, len(hashes), MERGED_MARKERS))
            ]
            self._chunks[bucket] = dict(merged)
            out.append((bucket, merged, list(replaced)))
        return out

    @classmethod
    def load(cls, records: Iterable[MarkerRecord]) -> Markers:
        """The markers as the store holds them (a restart)."""
        markers = cls()
        held: dict[int, int] = {}  # bucket -> markers in its chunks
        for bucket, chunk, value in records:
            chunks = markers._chunks.get(bucket)
            if chunks is None:
                chunks = markers._chunks[bucket] = {}
                markers._order.append(bucket)
            chunks[chunk] = value
            hashes = decode_hashes(value)
            held[bucket] = held.get(bucket, 0) + len(hashes)
            for h in hashes:
                markers._set.add(h)
        for bucket, chunks in markers._chunks.items():
            if len(chunks) > -(-held[bucket] // MERGED_MARKERS):  # more chunks than a merge leaves
                markers._split.add(bucket)
        heapq.heapify(markers._order)
        return markers


def _next_chunk(chunks: Iterable[int | None]) -> int:
    return 1 + max((c for c in chunks if c is not None), default=-1)


class SeqHashes:
    """The hashes of a version's counted requests by position (``seq``), from the oldest still needed, for
    its replay dedupe (:mod:`streams.tracker`): an ``array('Q')`` in position order and a :class:`HashSet`
    of its members, about 21 bytes a request (tracemalloc, a horizon of 50,000; 56 with the hash table
    used before, some 300 with an entry object, its id and a dict slot). Pushing and forgetting cost O(1)
    amortized (the array drops its forgotten front in one move once it is half of it)."""

    def __init__(self) -> None:
        self._hashes = array("Q")
        self._first = 1  # the seq of _hashes[0]
        self._front = 0  # index of the oldest hash kept; those before it are forgotten
        self._set = HashSet()

    def __len__(self) -> int:
        return len(self._hashes) - self._front

    def __contains__(self, h: int) -> bool:
        return h in self._set

    @property
    def first_seq(self) -> int | None:
        """The position of the oldest hash kept."""
        return self._first + self._front if len(self) else None

    def push(self, seq: int, h: int) -> None:
        """Remember request ``seq`` (positions come in order; a gap is filled with nothing)."""
        if not len(self):
            self._hashes, self._first, self._front = array("Q"), seq, 0
        gap = seq - (self._first + len(self._hashes))
        if gap < 0:
            raise ValueError(f"position {seq} pushed after {self._first + len(self._hashes) - 1}")
        if gap:
            self._hashes.extend(array("Q", bytes(8 * gap)))  # EMPTY: never a hash
        self._hashes.append(h)
        self._set.add(h)

    def forget_before(self, seq: int) -> None:
        """Forget the requests before position ``seq``."""
        hashes, end = self._hashes, min(seq - self._first, len(self._hashes))
        while self._front < end:
            h = hashes[self._front]
            if h > DELETED:
                self._set.discard(h)
            self._front += 1
        if self._front > 4096 and 2 * self._front > len(hashes):
            del hashes[: self._front]
            self._first += self._front
            self._front = 0
