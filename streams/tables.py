"""The monitor's tables: a Faust table that writes to a named changelog partition, and the join's store.

Both exist because the agents work in batches (``take_events``) that mix partitions: Faust would take the
changelog partition from the current event, which a batch or a timer does not have.

A table write is sent to the changelog later, from Faust's producer buffer, and Faust's flush before a
commit gives up on that buffer after 0.1 s without a send (``ProducerBuffer.flush_atmost``): on a loaded
worker the group's offset can be committed past a batch whose table records are still in the buffer, and
a crash then loses the batch's effect for good. So an agent awaits its batch's table records
(:meth:`PartitionedTable.written`) before its events are acknowledged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import orjson

from streams.markers import MarkerRecord
from streams.watermarks import Clocks

Entries = list[tuple[str, dict[str, Any]]]
Markers = list[MarkerRecord]


class PartitionedTable(faust.Table):
    """A table whose writes name their changelog partition.

    Faust takes it from the event being processed, but a batch from ``take_events`` mixes partitions and
    timers have no event: the caller sets ``writing_partition`` (the source partition of the keys it
    writes) so the changelog stays co-partitioned with the stream it mirrors.
    """

    writing_partition: int | None = None
    _unwritten: list[Any] | None = None  # the changelog sends not yet awaited (FutureMessage)

    def partition_for_key(self, key: Any) -> int | None:
        if self.writing_partition is None:
            raise RuntimeError(f"table {self.name}: set writing_partition before writing")
        return self.writing_partition

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().send_changelog(*args, **kwargs)
        if self._unwritten is None:
            self._unwritten = []
        self._unwritten.append(sent)
        return sent

    async def written(self) -> None:
        """Wait until every record written to this table so far is on the broker (raising the send's error:
        the batch is then not acknowledged, and is processed again)."""
        sent, self._unwritten = self._unwritten, None
        if sent:
            await asyncio.gather(*sent)


class PendingStore:
    """The join's pending store for one partition: the ``pending`` table, written back once per batch.

    Keys are ``r:<partition>:<request_id>`` (pending requests), ``m:<partition>:<bucket>:<chunk>`` (the
    markers a batch added to a bucket, :mod:`streams.markers`; ``m:<partition>:<bucket>`` from older
    monitors) and
    ``c:<partition>`` (the clocks, and the next offset of the joinable partition to process:
    :mod:`streams.offsets`). A batch's records go out in this order, on one changelog partition: new
    and changed entries and markers, then the clocks, then deletions. Whatever prefix of them survives a
    crash, the clocks are never ahead of the entries they account for, and never behind a deletion they
    justified (a deleted marker with an older clock would let a replayed prediction through as new); nor
    is the next offset ahead of the effects of the messages before it.
    """

    def __init__(self, table: PartitionedTable, partition: int) -> None:
        self.table = table
        self.partition = partition
        self.prefix = f"r:{partition}:"
        self.dirty: dict[str, dict[str, Any] | None] = {}  # full keys, both kinds; None deletes
        self.written_offset: int | None = None  # the next offset in the last clocks record written

    def get(self, key: str) -> dict[str, Any] | None:
        full = self.prefix + key
        if full in self.dirty:
            return self.dirty[full]
        return _unpacked(self.table.get(full))

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.dirty[self.prefix + key] = value

    def delete(self, key: str) -> None:
        self.dirty[self.prefix + key] = None

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        n = len(self.prefix)
        return [(k[n:], _unpacked(v)) for k, v in self.table.items() if k.startswith(self.prefix)]

    def put_markers(self, bucket: int, chunk: int, value: dict[str, Any]) -> None:
        self.dirty[_marker_key(self.partition, bucket, chunk)] = value

    def delete_markers(self, bucket: int, chunks: list[int | None]) -> None:
        for chunk in chunks:
            self.dirty[_marker_key(self.partition, bucket, chunk)] = None

    def marker_records(self) -> list[MarkerRecord]:
        prefix = f"m:{self.partition}:"
        return [_marker_record(k[len(prefix) :], v) for k, v in self.table.items() if k.startswith(prefix)]

    def flush(self, clocks: Clocks, next_offset: int | None = None) -> None:
        """Write the batch's records; ``next_offset``: the joinable partition's offset after the batch."""
        if not self.dirty and next_offset == self.written_offset:
            return
        table = self.table
        table.writing_partition = self.partition
        deleted = []
        for full, value in self.dirty.items():
            if value is not None:
                table[full] = _packed(value) if full.startswith(self.prefix) else value
            else:
                deleted.append(full)
        record = clocks.as_dict()
        if next_offset is not None:
            record["next_offset"] = next_offset
        table[f"c:{self.partition}"] = record
        self.written_offset = next_offset
        for full in deleted:
            if full in table:
                del table[full]
        self.dirty.clear()


def load_join_state(table: Any) -> dict[int, tuple[Entries, Markers, Clocks]]:
    """Each partition's pending requests, marker buckets and clocks, as the ``pending`` table holds them."""
    state: dict[int, tuple[Entries, Markers, Clocks]] = {}

    def of(partition: int) -> tuple[Entries, Markers, Clocks]:
        if partition not in state:
            state[partition] = ([], [], Clocks())
        return state[partition]

    for key, value in table.items():
        kind, _, rest = key.partition(":")
        if kind == "c":
            partition = int(rest)
            if isinstance(value.get("predictions"), dict):  # older monitors kept one number per stream
                state[partition] = (*of(partition)[:2], Clocks.from_dict(value))
        elif kind == "r":
            partition, _, rid = rest.partition(":")
            of(int(partition))[0].append((rid, _readable(_unpacked(value))))
        elif kind == "m":
            partition, _, where = rest.partition(":")
            of(int(partition))[1].append(_marker_record(where, value))
    return state


def _marker_key(partition: int, bucket: int, chunk: int | None) -> str:
    return f"m:{partition}:{bucket}" if chunk is None else f"m:{partition}:{bucket}:{chunk}"


def _marker_record(where: str, value: dict[str, Any]) -> MarkerRecord:
    """A marker record from what follows ``m:<partition>:`` in its key: ``<bucket>:<chunk>``, or an older
    monitor's ``<bucket>``."""
    bucket, _, chunk = where.partition(":")
    return int(bucket), (int(chunk) if chunk else None), value


def load_join_offsets(table: Any) -> dict[int, int]:
    """Each partition's next joinable offset to process, as the ``pending`` table's clocks records hold it
    (none for a partition whose state an older monitor wrote)."""
    return {
        int(key[2:]): int(value["next_offset"])
        for key, value in table.items()
        if key.startswith("c:") and isinstance(value, dict) and "next_offset" in value
    }


def _packed(entry: dict[str, Any]) -> str:
    """A pending request as the table keeps it: its JSON as one string. A pending prediction as a dict held
    its candidates as a list of strings, some 2 KB in Python objects for 20 candidates; a backlog or a slow
    outcome stream keeps many of them (the monitor's memory grew by a dict and a list per pending request
    on the bench). One string is a fifth of that, and is what the changelog carries anyway."""
    return orjson.dumps(entry).decode()


def _unpacked(value: Any) -> Any:
    """A pending request from the table: packed (:func:`_packed`), or a dict as older monitors wrote it."""
    return orjson.loads(value) if isinstance(value, str) else value


def _readable(entry: dict[str, Any]) -> dict[str, Any]:
    """A pending request as this monitor writes it, from what an older one wrote (single-letter fields)."""
    if "kind" in entry:
        return entry
    if entry.get("k") == "p":
        return {"kind": "prediction", "ts": entry["ts"], "version": entry["v"], "candidates": entry["c"],
                "recommended": entry["r"]}  # fmt: skip
    return {"kind": "outcome", "ts": entry["ts"], "purchased": entry["b"]}
