"""The monitor's tables: a Faust table that writes to a named changelog partition, and the join's state in
the ``pending`` table, read back after a recovery (:mod:`streams.pending` writes it).

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

from streams.markers import MarkerRecord
from streams.pending import PendingStore, marker_record, restored_stores
from streams.watermarks import Clocks

__all__ = ["PartitionedTable", "PendingStore", "load_join_offsets", "load_join_state", "restore_join"]

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


def load_join_state(table: Any) -> dict[int, tuple[Entries, Markers, Clocks]]:
    """Each partition's pending requests, marker buckets and clocks, as the ``pending`` table holds them."""
    return {
        p: (store.items(), markers, clocks) for p, (store, markers, clocks) in restore_join(table).items()
    }


def restore_join(table: Any) -> dict[int, tuple[PendingStore, Markers, Clocks]]:
    """Each partition's pending store (read back: :meth:`PendingStore.restore`), marker records and clocks."""
    stores = restored_stores(table)
    state: dict[int, tuple[PendingStore, Markers, Clocks]] = {}

    def of(partition: int) -> tuple[PendingStore, Markers, Clocks]:
        if partition not in state:
            state[partition] = (stores.get(partition) or PendingStore(table, partition), [], Clocks())
        return state[partition]

    for partition in stores:
        of(partition)
    for key, value in table.items():
        kind, _, rest = key.partition(":")
        if kind == "c":
            partition = int(rest)
            if isinstance(value.get("predictions"), dict):  # older monitors kept one number per stream
                state[partition] = (*of(partition)[:2], Clocks.from_dict(value))
        elif kind == "m":
            partition, _, where = rest.partition(":")
            of(int(partition))[1].append(marker_record(where, value))
    return state


def load_join_offsets(table: Any) -> dict[int, int]:
    """Each partition's next joinable offset to process, as the ``pending`` table's clocks records hold it
    (none for a partition whose state an older monitor wrote)."""
    return {
        int(key[2:]): int(value["next_offset"])
        for key, value in table.items()
        if key.startswith("c:") and isinstance(value, dict) and "next_offset" in value
    }
