"""The Faust monitor: a thin layer that feeds Kafka to the plain modules beside it.

Three agents, each with concurrency 1 and batches from ``stream.take_events``:

``route``  reads predictions, outcomes and shadow predictions as produced, checks them (the contract,
           plausible event times: :mod:`schemas.eventtime`; bad outcomes go to ``<prefix>outcomes.dlq``)
           and repartitions them by request_id to the internal topic ``<prefix>monitor-joinable``, one
           message per join partition and batch, with a report on its source partitions
           (:mod:`streams.routing`); a timer repeats the reports when the sources are quiet.
``join``   reads ``<prefix>monitor-joinable``, joins predictions with outcomes per partition in event time
           (:mod:`streams.join`) with the pending requests in the ``pending`` table, and sends the
           labelled requests to the internal topic ``<prefix>monitor-labelled``, one message per version
           and batch, keyed by model_version: that repartition puts each version's stream in one place.
``watch``  reads the labelled requests, counts them into the version's windows (:mod:`streams.tracker`),
           emits metrics, judges the alert rules (:mod:`streams.alerts`), follows the deployment epochs and
           orders rollbacks (:mod:`streams.decisions`, :mod:`streams.rollback`); its state lives in the
           ``windows`` table.
           While an experiment runs, the join also sends its evidence (shadow pairs, a canary's arms) on
           the labelled topic, and the watch agent runs its comparison and sends its decision
           (:mod:`streams.experiments`, :mod:`streams.experiment_agents`).
``failures`` reads the dead-letter topic and sends the model failures on to the labelled stream by
           version (:mod:`streams.failures`), where ``watch`` counts them into the version's error rate.

A timer emits every ``emit_every_s`` seconds for versions with news since their last emission, and a
background thread follows the command topic (:mod:`streams.history`).

Names: the app id is ``<prefix>monitor`` (also its consumer group), so its topics are
``<prefix>monitor-joinable``, ``<prefix>monitor-labelled``, ``<prefix>monitor-pending-changelog`` and
``<prefix>monitor-windows-changelog``.

Models: a monitor watches one model, ``model_name`` (``monitor --model cart``). Another model's monitor is
its own app, ``<prefix>monitor-<model>`` (:func:`monitor_app_id`): ``route`` passes on only its model's
predictions (:class:`~streams.routing.Router`), ``failures`` only its model's, the command follower reads
only its model's commands, and metrics, alerts and rollback commands name the model.

Delivery is at-least-once (Faust's ``exactly_once`` has open duplicate bugs) with idempotent effects.
Faust flushes everything produced before it commits offsets. Each output (joinable events, labelled
requests, metrics, alerts, commands) is acknowledged before the state that says it was sent is written, so
a crash repeats work rather than lose it; the repeats are recognised: the join's markers, the windows' last
counted offset and recent request ids, the alert transitions and commands already on their topics.

Start it with ``modelwatch monitor`` or ``faust -A streams.app worker -l info``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import faust

from schemas import codec
from services.config import AlertRule, Settings, load_settings
from services.registry.keys import signer_of
from streams import activations
from streams.alertmanager_agents import AlertmanagerAgents
from streams.alerts import RegistryBaselines
from streams.connection import broker_credentials, ensure_internal_topics, wait_for_sources
from streams.decisions import Decisions
from streams.evidence import is_evidence
from streams.experiment_agents import ExperimentAgents
from streams.failures import Failure, encode_failures, failure_of
from streams.fleet import Fleet
from streams.history import CommandFollower, published_alerts
from streams.join import Joiner, JoinStats
from streams.join_agents import JoinAgents
from streams.metrics_agents import MetricsAgents
from streams.offsets import SEEN, PartitionOffsets
from streams.rollback import RollbackPolicy
from streams.routing import Router
from streams.tables import PartitionedTable
from streams.tracker import Emission, TrackerConfig, VersionTracker
from streams.watch import Watch

log = logging.getLogger("modelwatch.monitor")

READY = "modelwatch monitor ready"


class Monitor(ExperimentAgents, JoinAgents, MetricsAgents, AlertmanagerAgents):
    """The Faust app, its topics and tables, and the plain state its agents share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        m = settings.monitor
        partitions, replication = wait_for_sources(settings)
        self.app_id = monitor_app_id(settings)
        ensure_internal_topics(settings, self.app_id, partitions, replication)
        self.app = faust.App(
            self.app_id,
            broker=[f"kafka://{host}" for host in settings.bootstrap_servers.split(",")],
            broker_credentials=broker_credentials(settings),
            autodiscover=False,
            # Internal topics and changelogs match the joined topics: same partitions, same replication.
            topic_partitions=partitions,
            topic_replication_factor=replication,
            # Short commit intervals leave less to redo after a crash; a commit is one small request.
            broker_commit_interval=m.commit_interval_s,
            # A SIGKILLed worker's partitions move to its successor after this, not after Faust's 60 s.
            broker_session_timeout=m.session_timeout_s,
            broker_heartbeat_interval=min(3.0, m.session_timeout_s / 3),
            consumer_auto_offset_reset="earliest",  # a new monitor judges what was produced before it
            # A batch's labelled requests and changelog records go out in a few large requests, not in
            # Faust's default 16 kB ones (one round trip each: the join waits for them every batch).
            producer_max_batch_size=512 * 1024,
            web_enabled=m.web_port is not None,  # tests run several workers on one host: no fixed port
            web_port=m.web_port or 6066,
            datadir=str(m.data_dir),
            store="memory://",  # the changelogs are the durable copy; tables are rebuilt from them
        )
        # Each batch sends up to batch_size labelled requests and as many changelog records; Faust's
        # default (100) makes the stream wait, and warn, several times per batch.
        self.app.producer.buffer.max_messages = 4 * m.batch_size
        self.partitions = partitions
        self.predictions_topic = settings.topic("predictions")
        self.outcomes_topic = settings.topic("outcomes")
        self.shadow_topic = settings.topic("predictions.shadow")  # paired with the outcomes, never windowed
        raw: dict[str, Any] = {"key_type": str, "value_type": bytes, "value_serializer": "raw"}
        # Keys as bytes, never decoded: the join reads the request_id from the value, and a key that is not
        # UTF-8 would otherwise raise in Faust's decoder and stall the join agent for good, silently.
        self.sources = self.app.topic(
            self.predictions_topic,
            self.outcomes_topic,
            self.shadow_topic,
            **{**raw, "key_type": bytes, "key_serializer": "raw"},
        )
        self.joinable = self.app.topic(
            f"{self.app_id}-joinable",
            internal=True,
            partitions=partitions,
            retention=timedelta(days=1),  # read within seconds; a day covers a long outage of the join
            **raw,
        )
        # Dead letters keep the source key's bytes, whatever they are.
        self.outcomes_dlq = self.app.topic(
            settings.topic("outcomes.dlq"), **{**raw, "key_type": bytes, "key_serializer": "raw"}
        )
        self.labelled = self.app.topic(
            f"{self.app_id}-labelled",
            internal=True,
            partitions=partitions,
            # Read within seconds; a day covers a long outage of the watch agent.
            retention=timedelta(days=1),
            **raw,
        )
        self.metrics_out = self.app.topic(settings.topic("metrics"), **raw)
        # Keys as bytes: a dead letter keeps its request's key, which need not be UTF-8.
        self.dead_letters = self.app.topic(
            settings.topic("requests.dlq"), **{**raw, "key_type": bytes, "key_serializer": "raw"}
        )
        self.alerts_out = self.app.topic(settings.topic("alerts"), **raw)
        self.commands_out = self.app.topic(settings.topic("model-commands"), **raw)
        self.pending = self._table("pending", "the join's pending predictions, outcomes and markers")
        self.windows = self._table("windows", "each version's windows, totals and alert states")

        self.label_window_ms = int(m.label_window_s * 1000)
        self.router = Router(
            partitions,
            future_ms=int(m.future_tolerance_s * 1000),
            past_ms=int(m.past_tolerance * 1000),
            prediction_past_ms=int(m.prediction_wait_s * 1000),
            idle_timeout_s=m.idle_timeout_s,
            highwater=self.source_highwater,  # idle means caught up by log offset (streams.routing)
            model=settings.model_name,
            default_model=settings.default_model,
        )
        self.tracker_config = TrackerConfig.from_settings(m, settings.alerts)
        self.baselines = RegistryBaselines(settings)
        key = settings.signing_key.get_secret_value() if settings.signing_key else None
        self.policy = RollbackPolicy(
            int(m.rollback_cooldown_s * 1000),
            signing_key=key,
            signer=signer_of(settings, "monitor"),
            model=settings.model_name,
        )
        self.decisions = Decisions(self.policy, self.baselines)
        self._install_experiments(key, signer_of(settings, "monitor"))  # signed like the rollbacks
        self.watching = Watch(self.tracker_config, self.decisions, self.baselines)
        self.watching.on_bundle = self.count_pre_periods  # the canaries' covariates (streams.pre_periods)
        self.follower = CommandFollower(settings)
        self.published: set[tuple[str, str]] | None = None  # (alert_id, state) on the alert topic
        self._owned: set[int] = set()  # the labelled partitions this worker owns

        self.joiners: dict[int, Joiner] = {}
        self.join_offsets = PartitionOffsets()  # the next joinable offset per partition (streams.offsets)
        self.watch_offsets = PartitionOffsets()  # the next labelled offset per partition, likewise
        self.join_stats = JoinStats()
        self.invalid = 0
        self._generation = 0  # bumped at each rebalance: the agents rebuild their plain state from the tables
        self._join_generation = -1
        self._watch_generation = -1
        self._lock = asyncio.Lock()  # the watch agent and the timer share the trackers
        self._sending = asyncio.Lock()  # the route agent and the report timer send bundles in turn
        self._source_starts: dict[tuple[str, int], int] = {}  # set at each rebalance (note_source_starts)
        self._last_stats = time.monotonic()

        self.app.agent(self.sources, name=f"{self.app_id}.route", concurrency=1)(self.route)
        self.app.agent(self.joinable, name=f"{self.app_id}.join", concurrency=1)(self.join)
        self.app.timer(min(1.0, m.idle_timeout_s / 4), name=f"{self.app_id}.report")(self.report)
        self.app.agent(self.labelled, name=f"{self.app_id}.watch", concurrency=1)(self.watch)
        self.app.agent(self.dead_letters, name=f"{self.app_id}.failures", concurrency=1)(self.failures)
        self.app.timer(m.emit_every_s, name=f"{self.app_id}.tick")(self.tick)
        self.app.task(self.follow_commands)
        self.app.on_rebalance_complete.connect(cast(Any, self.on_rebalance_complete))  # mode's stubs
        self.app.on_before_shutdown.connect(cast(Any, self.on_before_shutdown))
        self._install_metrics()  # Prometheus, /healthz and /readyz with monitor.metrics_port
        self._install_alertmanager()  # alerts posted to Alertmanager with [alertmanager] url

    def _table(self, name: str, help: str) -> PartitionedTable:
        table = PartitionedTable(
            self.app,
            name=name,
            # JSON values (Faust encodes them with orjson): what a recovery decodes, too.
            key_type=str,
            partitions=self.partitions,
            help=help,
            beacon=self.app.tables.beacon,
        )
        self.app.tables.add(table)
        return table

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def follow_commands(self) -> None:
        self._start_follower()

    def _start_follower(self) -> None:
        if not self.follower.started:
            self.follower.start()

    async def on_rebalance_complete(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        self._generation += 1
        self._assign_sources()
        await self.note_source_starts()  # before the partitions are resumed and sought (streams.join_agents)
        self._start_follower()  # the first rebalance may come before the app's tasks start
        loop = asyncio.get_running_loop()
        caught_up = await loop.run_in_executor(None, self.follower.ready.wait, 30.0)
        assignment = sorted(str(tp) for tp in self.app.consumer.assignment())
        log.info("%s: %d partitions, history %s", READY, len(assignment), "read" if caught_up else "LATE")

    async def on_before_shutdown(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.follower.stop()
        await self._close_alert_sender()

    # -- the windows -------------------------------------------------------------------------------------

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
                found = await self._read_missed(self.labelled, partition, missed)
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
                "joined %d (outcome first %d), expired %d, duplicates %d, orphan outcomes %d, "
                "invalid %d; %d versions",
                s.joined, s.outcome_first, s.expired, s.duplicates, s.orphan_outcomes,
                self.invalid + self.watching.invalid, len(self.watching.trackers),
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


def monitor_app_id(settings: Settings) -> str:
    """The Faust app id, also the consumer group and the internal topics' prefix: ``<prefix>monitor`` for
    the default model, ``<prefix>monitor-<model>`` for another (one monitor per model, each its own group)."""
    return settings.monitor_app_id


def create_monitor(settings: Settings | None = None) -> Monitor:
    return Monitor(settings or load_settings())


def run(settings: Settings) -> None:
    """Run a monitor worker until it is stopped (SIGINT/SIGTERM stop it cleanly)."""
    monitor = create_monitor(settings)
    worker = faust.Worker(monitor.app, loglevel=settings.monitor.log_level, quiet=True)
    worker.execute_from_commandline()


def __getattr__(name: str) -> Any:
    # `faust -A streams.app worker` looks up `app` here; build it on first use so that importing this module
    # (for `--help`, or the tests) needs no broker.
    if name == "app":
        monitor = create_monitor()
        globals()["monitor"] = monitor
        globals()["app"] = monitor.app
        return monitor.app
    raise AttributeError(name)
