"""The watch's agents in the Faust monitor (:mod:`streams.app`): ``watch``, ``failures`` and the ``tick``
timer, and what they publish.

``watch`` counts each labelled message once and in offset order (:mod:`streams.offsets`) into the
versions' windows (:mod:`streams.watch`), publishes metrics, alert transitions and the rollbacks decided
(:mod:`streams.decisions`), and writes the windows to the ``windows`` table; ``failures`` sends the model
failures of the dead-letter topic on to the labelled stream; ``tick`` emits for versions with news and
decides what time alone decides. The plain modules hold the logic; this holds the Kafka side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import faust
from confluent_kafka import Message

from schemas import codec
from services.config import AlertRule, Settings
from streams import activations
from streams.alertmanager_agents import AlertmanagerAgents
from streams.decisions import Decisions
from streams.evidence import is_evidence
from streams.experiment_agents import ExperimentAgents
from streams.failures import Failure, encode_failures, failure_of
from streams.fleet import Fleet
from streams.history import CommandFollower, published_alerts
from streams.join import JoinStats
from streams.join_agents import JoinAgents
from streams.metrics_agents import MetricsAgents
from streams.offsets import SEEN, PartitionOffsets, committed_offsets
from streams.source_reader import SourceReader
from streams.tables import PartitionedTable
from streams.tracker import Emission, VersionTracker
from streams.watch import Watch

log = logging.getLogger("modelwatch.monitor")


class WatchAgents(ExperimentAgents, JoinAgents, MetricsAgents, AlertmanagerAgents):
    """The watch side of :class:`streams.app.Monitor`, which sets these attributes up; it counts what the
    join sends, runs the experiments beside it, and exports and notifies what it publishes."""

    settings: Settings
    app: faust.App
    labelled: faust.TopicT
    dead_letters: faust.TopicT
    metrics_out: faust.TopicT
    alerts_out: faust.TopicT
    commands_out: faust.TopicT
    windows: PartitionedTable
    source_reader: SourceReader
    watching: Watch
    watch_offsets: PartitionOffsets
    decisions: Decisions
    follower: CommandFollower
    published: set[tuple[str, str]] | None
    join_stats: JoinStats
    invalid: int
    _lock: asyncio.Lock
    _owned: set[int]
    _generation: int
    _watch_generation: int
    _last_stats: float
    _dead_letter_starts: dict[tuple[str, int], int]

    async def watch(self, stream: faust.StreamT) -> None:
        m = self.settings.monitor
        async for events in cast(faust.Stream, stream).take_events(m.batch_size, within=m.batch_within_s):
            async with self._lock:
                if self._watch_generation != self._generation:
                    self._load_trackers()
                fleet = self._fleet()
                batch = await self._in_offset_order(events)
                emissions, touched = self.watching.count((b for b in batch if not is_evidence(b[0])), fleet)
                await self._publish(emissions, fleet)
                self._persist(touched)
                await self.count_experiments([b for b in batch if is_evidence(b[0])])
                # After the effects they account for, on the same changelog partitions.
                for partition, key, value in self.watch_offsets.records({p for _, p, _ in batch}):
                    self.windows.writing_partition = partition
                    self.windows[key] = value
                await self.windows.written()  # before the batch's offsets may be committed (streams.tables)

    async def _in_offset_order(self, events: Sequence[faust.EventT]) -> list[tuple[bytes, int, int]]:
        """(value, partition, offset) of each labelled message of the batch not counted before, and of those
        the consumer passed over (read from the broker first): each once, in offset order, whatever Faust's
        consumer delivers around a rebalance (:mod:`streams.offsets`)."""
        batch: list[tuple[bytes, int, int]] = []
        for e in events:
            partition, offset = e.message.partition, e.message.offset
            missed = self.watch_offsets.missed(partition, offset)
            if missed is SEEN:
                continue  # counted before: its effects are in the windows
            if missed:
                found = await self._read_missed(self.labelled.get_topic_name(), partition, missed)
                batch += [(m.value() or b"", partition, cast(int, m.offset())) for m in found]
            batch.append((e.value, partition, offset))
            self.watch_offsets.done(partition, offset)
        return batch

    async def failures(self, stream: faust.StreamT) -> None:
        """Model failures from the dead-letter topic, sent on to the labelled stream by version."""
        m = self.settings.monitor
        async for events in cast(faust.Stream, stream).take_events(m.batch_size, within=m.batch_within_s):
            by_version: dict[str, list[Failure]] = {}
            for event in events:
                values = [m.value() for m in await self._passed_over(event)] + [event.value]
                for failure in filter(None, map(failure_of, values)):
                    if (failure.model or self.settings.default_model) == self.model:
                        by_version.setdefault(failure.version, []).append(failure)
            # On the broker before this batch's offsets are committed: a crash sends them again, and the
            # tracker knows a failure by its request id.
            sent = [
                await self.labelled.send(key=version, value=encode_failures(version, items), force=True)
                for version, items in by_version.items()
            ]
            if sent:
                await asyncio.gather(*sent)

    async def _passed_over(self, event: faust.EventT) -> list[Message]:
        """The messages before ``event`` the consumer passed over, if it is its partition's first since the
        rebalance (:meth:`note_dead_letter_starts`), read from the broker."""
        message = event.message
        key = (message.topic, message.partition)
        start = self._dead_letter_starts.pop(key, None) if self._dead_letter_starts else None
        if start is None or message.offset <= start:
            return []
        return await self._read_missed(message.topic, message.partition, range(start, message.offset))

    async def note_dead_letter_starts(self) -> None:
        """Where each dead-letter partition assigned now starts: the group's committed offset, which Faust
        seeks it to. Around that seek Faust 0.15's consumer can pass over a partition's first messages and
        commit past them (streams.offsets): seen twice with two workers, one SIGKILLed, when the sources
        were still read by a Faust agent (the survivor never routed the dead one's next predictions and
        outcomes). The failures agent compares each partition's first message with its start and reads
        what lies between from the broker. Only the first: later gaps are a transactional producer's
        commit markers, and reading each would cost a fetch."""
        topics = {self.dead_letters.get_topic_name()}
        assigned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in topics]
        loop = asyncio.get_running_loop()
        try:
            group = self.app.conf.id
            starts = await loop.run_in_executor(None, committed_offsets, self.settings, group, assigned)
        except Exception as exc:  # without them the first messages are taken as they come, as before
            log.warning("could not read the committed offsets of the dead-letter partitions: %r", exc)
            starts = {}
        self._dead_letter_starts = starts

    async def tick(self, *_: Any) -> None:
        """Emit for versions with news since their last emission; log the counters now and then."""
        async with self._lock:
            if self._watch_generation != self._generation:
                # The generation moves once the tables are recovered; while a later rebalance is under way
                # they may be half restored. Otherwise load here: with no traffic after a restart, a
                # pending rollback or an epoch's end is decided by the ticks alone.
                if self.app.rebalancing or self._generation == 0:
                    return
                self._load_trackers()
            fleet = self._fleet()
            emissions, touched = self.watching.tick(fleet)
            await self._publish(emissions, fleet)
            self._persist(touched)
            await self._publish_activations(fleet)
            await self.count_experiments([])  # decisions the history held back; paced events
            await self.windows.written()  # no offset waits for these, but the list of sends stays short
        if time.monotonic() - self._last_stats > 30:
            self._last_stats = time.monotonic()
            s = self.join_stats
            log.info(
                "routed %d source messages (at most %d fetched ahead); joined %d (outcome first %d), "
                "expired %d, duplicates %d, orphan outcomes %d, invalid %d; shadow predictions paired %d, "
                "unpaired %d; %d versions",
                self.source_reader.routed, self.source_reader.most_held, s.joined, s.outcome_first,
                s.expired, s.duplicates, s.orphan_outcomes, self.invalid + self.watching.invalid, s.paired,
                s.shadow_unpaired,
                len(self.watching.trackers),
            )  # fmt: skip

    def _load_trackers(self) -> None:
        """Rebuild the trackers of the labelled partitions this worker owns from the ``windows`` table
        (after recovery; :meth:`streams.watch.Watch.restore`)."""
        labelled = self.labelled.get_topic_name()
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == labelled}
        left = self.watching.restore(self.windows.items(), owned)
        self.watch_offsets = PartitionOffsets.restore(self.windows.items(), owned)
        self._watch_generation = self._generation
        self._owned = owned
        self.published = None  # read the alert topic again: another worker may have sent what we now own
        trackers = self.watching.trackers
        log.info(
            "watching labelled partitions %s: %d versions restored, %d left to their owners",
            sorted(owned), len(trackers), left,
        )  # fmt: skip
        for t in trackers.values():
            firing = ", ".join(t.firing()) or "nothing"
            log.info(
                "restored %s from labelled partition %d: %d labelled, %d expired; firing %s",
                t.version, t.partition, t.total, t.expired, firing,
            )  # fmt: skip

    def _fleet(self) -> Fleet | None:
        """The deployment state, or ``None`` while the follower is still reading it after a start: that
        delays the decisions to a later evaluation, it never blocks this one."""
        return self.follower.fleet() if self.follower.ready.is_set() else None

    async def _publish(self, emissions: list[tuple[VersionTracker, Emission]], fleet: Fleet | None) -> None:
        """One evaluation: send metrics, alert transitions and the rollbacks decided now, and wait for the
        broker's acknowledgement.

        An alert transition already on the alert topic (sent just before a crash lost the state that
        recorded it) is not sent again; its rollback is decided like any firing alert's, and recognised by
        its command id if it was ordered already.
        """
        if self.published is None:
            loop = asyncio.get_running_loop()
            self.published = await loop.run_in_executor(None, published_alerts, self.settings)
        self._exported(emissions)
        sent = []
        announced: list[tuple[VersionTracker, AlertRule | None, dict[str, Any]]] = []
        for tracker, emission in emissions:
            for event in emission.metrics:
                fut = await self.metrics_out.send(
                    key=tracker.version, value=codec("metrics").encode(self._named(event)), force=True
                )
                sent.append(fut)
            for rule, alert in emission.alerts:
                transition = (alert["alert_id"], alert["state"])
                if transition in self.published:
                    log.info("alert %s %s was sent before the restart; not again", *transition)
                    continue
                announced.append((tracker, rule, alert))
        firing_rollbacks = [
            a for _, r, a in announced if r is not None and r.action == "rollback" and a["state"] == "firing"
        ]
        now_ms = int(time.time() * 1000)
        for command in self.decisions.rollbacks(self.watching.trackers, fleet, firing_rollbacks, now_ms):
            fut = await self.commands_out.send(
                key=self.settings.model_name, value=codec("model-command").encode(command), force=True
            )
            sent.append(fut)
        for tracker, _rule, alert in announced:
            log.warning("alert %s %s: %s", alert["state"], alert["alert_id"], alert["message"])
            fut = await self.alerts_out.send(
                key=tracker.version, value=codec("alert").encode(self._named(alert)), force=True
            )
            sent.append(fut)
        if sent:
            await asyncio.gather(*sent)
        self.published.update((a["alert_id"], a["state"]) for _, _, a in announced)
        self._notify(a for _, _, a in announced)

    async def _publish_activations(self, fleet: Fleet | None) -> None:
        """The rejected-activation alerts (:mod:`streams.activations`), sent by one worker of the group: the
        owner of labelled partition 0 (they belong to no version's stream)."""
        if 0 not in self._owned or self.published is None:
            return
        alerts = activations.evaluate(fleet, self.published, int(time.time() * 1000))
        sent = []
        for alert in alerts:
            log.warning("alert %s %s: %s", alert["state"], alert["alert_id"], alert["message"])
            value = codec("alert").encode(self._named(alert))
            sent.append(await self.alerts_out.send(key=alert["model_version"], value=value, force=True))
        if sent:
            await asyncio.gather(*sent)  # on the broker before it counts as sent
        self.published.update((a["alert_id"], a["state"]) for a in alerts)
        self._notify(alerts)

    @property
    def model(self) -> str:
        """The model this monitor watches."""
        return self.settings.model_name

    def _named(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` (metrics, an alert) naming the model it is about."""
        event["model"] = self.model
        return event

    def _persist(self, trackers: list[VersionTracker]) -> None:
        for tracker in trackers:
            self.windows.writing_partition = tracker.partition
            for key, value in tracker.changes():
                if value is not None:
                    self.windows[key] = value
                elif key in self.windows:
                    del self.windows[key]
