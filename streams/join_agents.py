"""The join's agents in the Faust monitor (:mod:`streams.app`): ``route``, its ``report`` timer, and ``join``.

``route`` reads predictions and outcomes as their producers partitioned them and repartitions them by
request_id (:mod:`streams.routing`); ``join`` joins each partition of that stream in event time
(:mod:`streams.join`) and sends the labelled requests on, by version. The plain modules hold the logic;
this holds the Kafka side: what is sent, and in which order it is acknowledged and persisted. ``join``
takes each joinable message once and in offset order, whatever its consumer delivers around a rebalance
(:mod:`streams.offsets`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import faust
import orjson
from confluent_kafka import Message
from faust.types import TP

from services.config import Settings
from streams.join import SHADOW, Joiner, JoinStats, Labelled, encode_bundle
from streams.offsets import SEEN, PartitionOffsets, committed_offsets, read_range
from streams.routing import Router, dead_letter
from streams.routing import decode_bundle as decode_joinable
from streams.tables import PartitionedTable, PendingStore, load_join_offsets, load_join_state

log = logging.getLogger("modelwatch.monitor")

#: Labelled requests per message of the repartition topic (well under Kafka's 1 MB message limit).
BUNDLE = 1000


class JoinAgents:
    """The join side of :class:`streams.app.Monitor`, which sets these attributes up."""

    settings: Settings
    app: faust.App
    partitions: int
    predictions_topic: str
    outcomes_topic: str
    shadow_topic: str
    joinable: faust.TopicT
    outcomes_dlq: faust.TopicT
    dead_letters: faust.TopicT
    labelled: faust.TopicT
    pending: PartitionedTable
    label_window_ms: int
    router: Router
    joiners: dict[int, Joiner]
    join_offsets: PartitionOffsets
    join_stats: JoinStats
    invalid: int
    _generation: int
    _join_generation: int
    _sending: asyncio.Lock
    _source_starts: dict[tuple[str, int], int]

    async def route(self, stream: faust.StreamT) -> None:
        m = self.settings.monitor
        async for events in cast(faust.Stream, stream).take_events(m.batch_size, within=m.batch_within_s):
            dead: list[tuple[bytes | None, bytes]] = []
            for event in events:
                message = event.message
                topic, partition, offset = message.topic, message.partition, message.offset
                for msg in await self._passed_over(event):
                    kind_of_ts, ts = msg.timestamp()
                    at, broker_ms = cast(int, msg.offset()), ts if kind_of_ts else None
                    self._route_one(topic, partition, at, broker_ms, msg.key(), msg.value(), dead)
                broker_ms = round(message.timestamp * 1000) if message.timestamp else None
                self._route_one(topic, partition, offset, broker_ms, event.key, event.value, dead)
            sent = [await self.outcomes_dlq.send(key=key, value=value, force=True) for key, value in dead]
            await self._send_joinable(sent)

    def _route_one(
        self,
        topic: str,
        partition: int,
        offset: int,
        broker_ms: int | None,
        key: bytes | None,
        value: bytes | None,
        dead: list[tuple[bytes | None, bytes]],
    ) -> None:
        """One source message to the router; a contract-invalid or implausible outcome to ``dead``."""
        kind = self._kinds.get(topic, "outcomes")
        rejected = self.router.route(kind, partition, self.partitions, broker_ms, value, offset)
        if rejected is None:
            return
        error, why = rejected
        if kind == "outcomes":  # a bad prediction's request was dead-lettered by the service
            dead.append(dead_letter(error, key, value, topic, partition, offset))
        self.invalid += why == "invalid"
        log.warning("skipped %s[%d]@%d: %s", topic, partition, offset, error)

    async def _passed_over(self, event: faust.EventT) -> list[Message]:
        """The messages before ``event`` the consumer passed over, if it is its partition's first since the
        rebalance (:meth:`note_source_starts`), read from the broker."""
        message = event.message
        key = (message.topic, message.partition)
        start = self._source_starts.pop(key, None) if self._source_starts else None
        if start is None or message.offset <= start:
            return []
        return await self._read_missed(message.topic, message.partition, range(start, message.offset))

    async def note_source_starts(self) -> None:
        """Where each source partition assigned now starts: the group's committed offset, which Faust seeks
        it to. Around that seek Faust 0.15's consumer can pass over a partition's first messages and commit
        past them (streams.offsets): seen twice with two workers, one SIGKILLed, and the survivor never
        routed the dead one's next predictions and outcomes. The route agent (and the failures agent, on
        the dead letters) compares each partition's first message with its start and reads what lies
        between from the broker. Only the first: later gaps are a transactional producer's commit markers,
        and reading each would cost a fetch."""
        topics = {*self._kinds, self.dead_letters.get_topic_name()}  # the failures agent's input too
        assigned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in topics]
        loop = asyncio.get_running_loop()
        try:
            group = self.app.conf.id
            starts = await loop.run_in_executor(None, committed_offsets, self.settings, group, assigned)
        except Exception as exc:  # without them the first messages are taken as they come, as before
            log.warning("could not read the committed offsets of the source partitions: %r", exc)
            starts = {}
        self._source_starts = starts

    @functools.cached_property
    def _kinds(self) -> dict[str, str]:
        return {
            self.predictions_topic: "predictions",
            self.outcomes_topic: "outcomes",
            self.shadow_topic: SHADOW,
        }

    def experiment_messages(self, by_version: dict[str, list[Labelled]]) -> list[tuple[str, bytes]]:
        """This batch's evidence for a running experiment (:mod:`streams.experiment_agents` has it)."""
        return []

    async def report(self, *_: Any) -> None:
        """Tell every join partition how the source partitions stand, also when no event comes."""
        if self.router.sources:
            await self._start_unread()
            await self._send_joinable([])

    async def _start_unread(self) -> None:
        """A source partition nothing was read of since its assignment (after a restart, all of them) is read
        up to the consumer's position there: it started at its committed offset, so a quiet partition
        already read to its end can be idle without a new message (:meth:`Router.reports`). The position
        counts messages the consumer fetched but this agent has not routed yet; asked only before the first
        message of the partition comes, and idle only after the idle timeout, that gap is a first batch held
        in Faust's buffer for the whole timeout."""
        unread = self.router.unread()
        if not unread:
            return
        try:
            asked = [self.app.consumer.position(TP(self._topic_of(s), p)) for s, p in unread]
            # Bounded, all together: a position may wait for an offset reset, and the reports must go on.
            positions = await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), timeout=5.0)
        except Exception as exc:  # slow, or the consumer not started: unknown, so not idle
            log.debug("no positions for %s: %r", unread, exc)
            return
        for (stream, partition), position in zip(unread, positions, strict=True):
            # An error: not assigned any more, or not started. Unknown, so not idle.
            if isinstance(position, int):
                self.router.started(stream, partition, position)

    def source_highwater(self, stream: str, partition: int) -> int | None:
        """The high watermark of a source partition as the consumer knows it (from its last fetch response),
        ``None`` if it does not know it (not fetched yet, not assigned, not started)."""
        try:
            return self.app.consumer.highwater(TP(self._topic_of(stream), partition))
        except Exception:  # aiokafka asserts the assignment; Faust raises ConsumerNotStarted
            return None

    def _topic_of(self, stream: str) -> str:
        return self.predictions_topic if stream == "predictions" else self.outcomes_topic

    async def _send_joinable(self, sent: list[Any]) -> None:
        # One sender at a time (the route agent, the report timer): a bundle's reports account for the
        # events routed before it, so a later bundle must not reach a join partition before an earlier one
        # (its reports would move the watermarks past events still on their way there).
        async with self._sending:
            for partition, bundle in self.router.bundles():
                sent.append(await self.joinable.send(value=bundle, partition=partition, force=True))
        # Acknowledged before the offsets of the events routed are committed (Faust flushes first).
        if sent:
            await asyncio.gather(*sent)

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
        state = load_join_state(self.pending)
        for partition, (entries, markers, clocks) in state.items():
            joiner = self._joiner(partition, {})
            joiner.clocks = clocks
            joiner.rebuild(entries, markers)
        self._join_generation = self._generation
        pending = sum(len(entries) for entries, _, _ in state.values())
        log.info("join state: %d partitions, %d pending or recent requests", len(self.joiners), pending)

    def _assign_sources(self) -> None:
        """The router reports on the source partitions this worker reads, and only on them."""
        streams = {self.predictions_topic: "predictions", self.outcomes_topic: "outcomes"}
        mine = {
            (streams[tp.topic], tp.partition) for tp in self.app.consumer.assignment() if tp.topic in streams
        }
        for stream, partition in set(self.router.sources) - mine:
            self.router.revoke(stream, partition)
        for stream, partition in mine:
            self.router.assign(stream, partition, self.partitions)
