"""The join's agent in the Faust monitor (:mod:`streams.app`): ``join``.

The source reader (:mod:`streams.source_reader`, a plain consumer in a thread) reads predictions and
outcomes as their producers partitioned them and repartitions them by request_id (:mod:`streams.routing`);
``join`` joins each partition of that stream in event time (:mod:`streams.join`) and sends the labelled
requests on, by version. The plain modules hold the logic; this holds the Kafka side: what is sent, and in
which order it is acknowledged and persisted. ``join`` takes each joinable message once and in offset
order, whatever its consumer delivers around a rebalance (:mod:`streams.offsets`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import faust
import orjson
from confluent_kafka import Message

from services.config import Settings
from streams.join import Joiner, JoinStats, Labelled, encode_bundle
from streams.offsets import SEEN, PartitionOffsets, read_range
from streams.routing import decode_bundle as decode_joinable
from streams.tables import PartitionedTable, PendingStore, load_join_offsets, restore_join

log = logging.getLogger("modelwatch.monitor")

#: Labelled requests per message of the repartition topic (well under Kafka's 1 MB message limit).
BUNDLE = 1000


class JoinAgents:
    """The join side of :class:`streams.app.Monitor`, which sets these attributes up."""

    settings: Settings
    app: faust.App
    partitions: int
    joinable: faust.TopicT
    labelled: faust.TopicT
    pending: PartitionedTable
    label_window_ms: int
    joiners: dict[int, Joiner]
    join_offsets: PartitionOffsets
    join_stats: JoinStats
    invalid: int
    _generation: int
    _join_generation: int

    def experiment_messages(self, by_version: dict[str, list[Labelled]]) -> list[tuple[str, bytes]]:
        """This batch's evidence for a running experiment (:mod:`streams.experiment_agents` has it)."""
        return []

    async def join(self, stream: faust.StreamT) -> None:
        m = self.settings.monitor
        async for events in cast(faust.Stream, stream).take_events(m.batch_size, within=m.batch_within_s):
            if self._join_generation != self._generation:
                self._load_joiners()
            stores: dict[int, PendingStore] = {}
            by_version: dict[str, list[Labelled]] = {}
            for event in events:
                partition, offset = event.message.partition, event.message.offset
                missed = self.join_offsets.missed(partition, offset)
                if missed is SEEN:
                    continue  # delivered again around a rebalance: its effects are in the state
                if missed:
                    for msg in await self._read_missed(self.joinable.get_topic_name(), partition, missed):
                        self._join_message(
                            partition, cast(int, msg.offset()), msg.value(), stores, by_version
                        )
                self._join_message(partition, offset, event.value, stores, by_version)
            # A batch holds a bundle per join partition: each version's labelled requests go on in event-time
            # order, not grouped by the partition that joined them (the count window follows this order).
            for items in by_version.values():
                items.sort(key=lambda item: (item.ts, item.request_id))
            # The labelled requests must be on the broker before the markers that say they were sent: the
            # other way round, a crash in between loses them (a replay finds the markers and sends nothing).
            sent = [
                await self.labelled.send(key=version, value=encode_bundle(items[i : i + BUNDLE]), force=True)
                for version, items in by_version.items()
                for i in range(0, len(items), BUNDLE)
            ]
            for key, value in self.experiment_messages(by_version):
                sent.append(await self.labelled.send(key=key, value=value, force=True))
            if sent:
                await asyncio.gather(*sent)
            for partition, store in stores.items():
                joiner = self.joiners[partition]
                joiner.sync()
                store.flush(joiner.clocks, self.join_offsets.next.get(partition))
            await self.pending.written()  # before the batch's offsets may be committed (streams.tables)

    def _join_message(
        self,
        partition: int,
        offset: int,
        value: bytes | None,
        stores: dict[int, PendingStore],
        by_version: dict[str, list[Labelled]],
    ) -> None:
        """One message of joinable ``partition``: its events joined, its reports applied."""
        joiner = self._joiner(partition, stores)
        self.join_offsets.done(partition, offset)
        try:
            joinable, reports = decode_joinable(value or b"")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.invalid += 1
            log.warning("skipped a joinable message at offset %d: %r", offset, exc)
            return
        for item in joiner.bundle(joinable, reports):
            by_version.setdefault(item.model_version, []).append(item)

    async def _read_missed(self, name: str, partition: int, missed: range) -> list[Message]:
        """The messages of topic ``name`` the consumer passed over, read from the broker (streams.offsets)."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, read_range, self.settings, name, partition, missed)
        log.warning(
            "%s partition %d: the consumer passed over offsets %d..%d; read %d of them from the broker",
            name.removeprefix(self.settings.topic_prefix), partition, missed.start, missed.stop - 1,
            len(found),
        )  # fmt: skip
        return found

    def _joiner(self, partition: int, stores: dict[int, PendingStore]) -> Joiner:
        joiner = self.joiners.get(partition)
        if joiner is None:
            m = self.settings.monitor
            joiner = Joiner(
                PendingStore(self.pending, partition),
                self.label_window_ms,
                m.unlabelled,
                out_of_order_ms=int(m.out_of_order * 1000),
                past_tolerance_ms=int(m.past_tolerance * 1000),
                prediction_wait_ms=int(m.prediction_wait_s * 1000),
            )
            joiner.stats = self.join_stats
            self.joiners[partition] = joiner
        store = joiner.store
        assert isinstance(store, PendingStore)
        stores[partition] = store
        return joiner

    def _load_joiners(self) -> None:
        """Rebuild each partition's join bookkeeping from the ``pending`` table (after recovery)."""
        self.joiners = {}
        self.join_offsets = PartitionOffsets(load_join_offsets(self.pending))
        state = restore_join(self.pending)
        for partition, (store, markers, clocks) in state.items():
            joiner = self._joiner(partition, {})
            joiner.store = store
            joiner.clocks = clocks
            joiner.rebuild(store.items(), markers)
        self._join_generation = self._generation
        pending = sum(len(store) for store, _, _ in state.values())
        segments = sum(store.segments for store, _, _ in state.values())
        log.info(
            "join state: %d partitions, %d pending requests in %d segments",
            len(self.joiners), pending, segments,
        )  # fmt: skip
