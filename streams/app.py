"""The Faust monitor: a thin layer that feeds Kafka to the plain modules beside it.

A source reader and three agents, each agent with concurrency 1 and batches from ``stream.take_events``:

``route``  (:mod:`streams.source_reader`, a plain consumer in a thread) reads predictions, outcomes and
           shadow predictions as produced, checks them (the contract, plausible event times:
           :mod:`schemas.eventtime`; bad outcomes go to ``<prefix>outcomes.dlq``) and repartitions them by
           request_id to the internal topic ``<prefix>monitor-joinable``, one message per join partition
           and batch, with a report on its source partitions (:mod:`streams.routing`); it repeats the
           reports every second or so while the sources are quiet.
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

The agents live beside this module, one side each: :mod:`streams.join_agents` (route, join),
:mod:`streams.watch_agents` (watch, failures, the timer), :mod:`streams.experiment_agents`,
:mod:`streams.metrics_agents` and :mod:`streams.alertmanager_agents`; this module builds the app and its
topics, tables and plain state.

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
counted offset and recent request ids, the alert transitions and commands already on their topics. A
fetch left over from before a rebalance takes no records (:mod:`streams.fetch_guard`).

Start it with ``modelwatch monitor`` or ``faust -A streams.app worker -l info``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

import faust

from services.config import Settings, load_settings
from services.registry.keys import signer_of
from streams import READY, fetch_guard
from streams.alerts import RegistryBaselines
from streams.connection import broker_credentials, ensure_internal_topics, wait_for_sources
from streams.decisions import Decisions
from streams.history import CommandFollower
from streams.join import Joiner, JoinStats
from streams.offsets import PartitionOffsets
from streams.rollback import RollbackPolicy
from streams.routing import Router
from streams.source_reader import SourceReader
from streams.tables import PartitionedTable
from streams.tracker import TrackerConfig
from streams.watch import Watch
from streams.watch_agents import WatchAgents

log = logging.getLogger("modelwatch.monitor")


class Monitor(WatchAgents):
    """The Faust app, its topics and tables, and the plain state its agents share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        m = settings.monitor
        partitions, replication = wait_for_sources(settings)
        self.app_id = monitor_app_id(settings)
        ensure_internal_topics(settings, self.app_id, partitions, replication)
        fetch_guard.install()  # a fetch left over from before a rebalance takes nothing
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
        raw: dict[str, Any] = {"key_type": str, "value_type": bytes, "value_serializer": "raw"}
        self.joinable = self.app.topic(
            f"{self.app_id}-joinable",
            internal=True,
            partitions=partitions,
            retention=timedelta(days=1),  # read within seconds; a day covers a long outage of the join
            **raw,
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
            model=settings.model_name,
            default_model=settings.default_model,
        )
        # The sources on a plain consumer in a thread; it gives the router the high watermarks, so idle
        # means caught up by log offset (streams.routing).
        self.source_reader = SourceReader(
            settings, self.router, self.joinable.get_topic_name(), on_invalid=self._count_invalid
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
        self._dead_letter_starts: dict[tuple[str, int], int] = {}  # set at each rebalance
        self._last_stats = time.monotonic()

        self.app.agent(self.joinable, name=f"{self.app_id}.join", concurrency=1)(self.join)
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
        log_at_debug(self.settings.monitor.debug_loggers)  # the worker has set its logging up by now
        self._start_follower()
        self.source_reader.start()

    def _count_invalid(self) -> None:
        self.invalid += 1  # from the source reader's thread: an int's += under the GIL, for a log line

    def _start_follower(self) -> None:
        if not self.follower.started:
            self.follower.start()

    async def on_rebalance_complete(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        self._generation += 1
        # Before the partitions are resumed and sought (streams.watch_agents).
        await self.note_dead_letter_starts()
        self._start_follower()  # the first rebalance may come before the app's tasks start
        loop = asyncio.get_running_loop()
        caught_up = await loop.run_in_executor(None, self.follower.ready.wait, 30.0)
        assignment = sorted(str(tp) for tp in self.app.consumer.assignment())
        log.info("%s: %d partitions, history %s", READY, len(assignment), "read" if caught_up else "LATE")

    async def on_before_shutdown(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.follower.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.source_reader.stop)
        await self._close_alert_sender()


def log_at_debug(names: Iterable[str]) -> None:
    """Log the loggers ``names`` at DEBUG whatever the worker's level: the root's handlers are lowered to
    DEBUG, and every other logger keeps the root's level, so only these say more."""
    names = list(names)
    if not names:
        return
    for handler in logging.root.handlers:
        handler.setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    log.info("logging at DEBUG: %s", ", ".join(names))


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
