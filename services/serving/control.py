"""Control: the replica's own reader of the command topic, the model it loads, and what it tells the others.

Each replica reads *every* command: its consumer is assigned the command log's one partition
(:func:`~services.deployment.follower.open_command_log`: no group, nothing committed, a topic with more
partitions refused) and starts at the beginning. What is in the log when the replica starts is its history,
judged in offset order by the same :class:`~services.deployment.state.DeploymentState` the monitor and the
CLI use, so a replica starts with the version last commanded, not with the one it was built or started
with. Reading history and live commands with one consumer leaves no gap between the two for a command to
fall into.

Loading and verifying a version (the registry checks the digest and signature before unpickling) happen
on this thread, off the hot path. The loaded model is handed to the poll loop through a :class:`ModelSlot`
(:mod:`services.serving.slot`); the loop swaps it in between two batches and only then acknowledges, so
every prediction is tagged with the version that computed it, and the acknowledgement's ``ts`` separates
the two versions' predictions. Events on ``rec.model-events`` (key: instance):

- ``activated``: version and command_id, after the swap. The version is the one this replica serves to
  everyone: for a ``shadow`` or ``canary``, the incumbent, with the candidate loaded beside it
  (:mod:`services.serving.experiment`); a ``promote`` swaps the loaded candidate in without reloading it;
- ``rejected``: the command's version and command_id with the reason: the version cannot be loaded (the
  error starts with ``cannot load``: missing, failing its digest or its manifest's signature, unpicklable),
  or the command is malformed, replayed, or refused by the keyring (unsigned, unknown key, a role not
  allowed this action, a bad signature) or the legacy signing key. The current model keeps serving;
- ``heartbeat``: every ``serve.heartbeat_s``, with the active version (null before the first deploy) and
  the partitions this replica serves.

A Control is about one model (``settings.model_name``): a replica serving several runs one per model, each
with its own slot, following only its model's commands (:class:`~services.deployment.state.DeploymentState`
skips the others') and naming its model (``model``) in every event it publishes.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from schemas import codec
from schemas.errors import ContractError
from services import kafka
from services.config import Settings
from services.deployment.experiments import ACTIVATING, STARTING, Experiment
from services.deployment.follower import (
    UNAUTHENTICATED,
    CatchUp,
    authenticated,
    new_state,
    open_command_log,
)
from services.deployment.state import LOAD_FAILURE
from services.model.protocol import Served, served
from services.serving.experiment import ShadowScorer, Trial
from services.serving.logs import EventLog, KafkaReporter
from services.serving.metrics import ServeMetrics
from services.serving.slot import Activation, ModelSlot, ModelSource


def load_logged(registry: ModelSource, version: str, log: EventLog) -> Served:
    """``registry.load(version)`` wrapped for serving, its warnings (a version built with other library
    versions) logged as events rather than printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = served(registry.load(version))
    for w in caught:
        log.warning("load_warning", version=version, category=w.category.__name__, message=str(w.message))
    return model


class Control(threading.Thread):
    """Follows the command topic, loads versions, and publishes the replica's model events."""

    def __init__(
        self,
        settings: Settings,
        instance: str,
        registry: ModelSource,
        slot: ModelSlot,
        log: EventLog,
        metrics: ServeMetrics,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"control-{instance}-{settings.model_name}", daemon=True)
        self.settings, self.instance, self.registry, self.slot = settings, instance, registry, slot
        self.model = settings.model_name  # the model whose commands this control follows
        self.log, self.metrics, self.stop_event = log, metrics, stop
        self.topic = settings.topic("model-commands")
        self.events_topic = settings.topic("model-events")
        # The command side of the deployment state: the replica obeys the commands, in log order.
        self.state = new_state(settings)
        self.partitions: list[int] = []  # the request partitions this replica serves (the poll loop sets it)
        self.ready = threading.Event()  # history read and the starting version (if any) offered
        self.failure: BaseException | None = None
        reporter = KafkaReporter(log.bind(client="control"))
        self.events = kafka.producer(
            settings,
            **reporter.client_settings(),
            **{
                "client.id": f"{settings.topic_prefix}serve-{instance}-{self.model}-events",
                "linger.ms": 0,  # acknowledgements are few and someone is waiting for each
            },
        )
        self._reporter = reporter
        self._next_heartbeat = 0.0
        self.shadow = ShadowScorer(
            kafka.producer(
                settings,
                **reporter.client_settings(),
                **{"client.id": f"{settings.topic_prefix}serve-{instance}-{self.model}-shadow"},
            ),
            settings.topic("predictions.shadow"),
            instance,
            settings.serve.default_k,
            log.bind(client="shadow"),
            model=self.model,
        )

    # -- events ---------------------------------------------------------------------------------------

    def _publish(self, event: str, version: str | None, ts: int | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {
            "instance": self.instance,
            "event": event,
            "model_version": version,
            "ts": ts if ts is not None else int(time.time() * 1000),
            "model": self.model,
            **{k: v for k, v in extra.items() if v is not None},
        }
        try:
            value = codec("model-event").encode(body)
        except ContractError as exc:  # e.g. a hostile command's over-long version: say so, without it
            body = {**body, "model_version": None, "error": f"{extra.get('error', '')} ({exc})"[:2000]}
            body.pop("command_id", None)
            value = codec("model-event").encode(body)
        try:
            self.events.produce(
                self.events_topic, value, key=self.instance.encode(), on_delivery=self._on_event
            )
        except BufferError:
            self.events.poll(1.0)
            self.events.produce(
                self.events_topic, value, key=self.instance.encode(), on_delivery=self._on_event
            )
        self.events.poll(0)

    def _on_event(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.log.error("model_event_lost", error=err.str())

    def acknowledge(self, activation: Activation, ts: int) -> None:
        """Called by the poll loop right after the swap; ``ts`` is later than every earlier prediction's."""
        command = activation.command
        self.metrics.activated(activation.version, self.model)
        self.metrics.commands.labels("activated").inc()
        trial = activation.trial
        self.log.info(
            "activated",
            version=activation.version,
            command_id=command.get("command_id"),
            action=command.get("action"),
            experiment=trial.experiment.experiment_id if trial else None,
            candidate=trial.experiment.candidate if trial else None,
        )
        self._publish("activated", activation.version, ts=ts, command_id=command.get("command_id"))

    def _reject(self, command: dict[str, Any] | None, reason: str) -> None:
        version = command.get("model_version") if command else None
        command_id = command.get("command_id") if command else None
        self.metrics.commands.labels("rejected").inc()
        self.log.warning("rejected", version=version, command_id=command_id, reason=reason)
        self._publish(
            "rejected",
            version if isinstance(version, str) else None,
            command_id=command_id if isinstance(command_id, str) else None,
            error=reason[:2000],
        )

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.settings.serve.heartbeat_s
        active = self.slot.active
        self._publish("heartbeat", active.version if active else None, partitions=sorted(self.partitions))

    # -- the thread -----------------------------------------------------------------------------------

    def run(self) -> None:
        consumer: Consumer | None = None
        if not authenticated(self.settings):
            self.log.warning("commands_not_authenticated", message=UNAUTHENTICATED)
        try:
            self.shadow.start()
            consumer = self._reader()
            if consumer is None:
                return
            self._catch_up(consumer)
            self.ready.set()
            while not self.stop_event.is_set():
                # poll() returns at the first command; consume(n, timeout) would sit out its timeout.
                first = consumer.poll(0.1)
                for msg in [first, *consumer.consume(100, 0)] if first is not None else []:
                    err = msg.error()
                    if err is None:
                        self._handle(msg.value(), msg.offset())
                    elif err.code() != KafkaError._PARTITION_EOF:
                        self.log.warning("command_read_error", error=err.str())
                self.heartbeat()
                self.events.poll(0)
        except BaseException as exc:  # the poll loop checks and re-raises: a dead control thread is fatal
            self.failure = exc
            self.log.error("control_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.ready.set()
            if consumer is not None:
                consumer.close()
            self.shadow.stop()
            self.heartbeat(force=True)
            self.events.flush(10)

    def _reader(self) -> Consumer | None:
        """A consumer assigned the command log's one partition from the start; waits for the topic."""
        consumer = kafka.consumer(
            self.settings,
            # Never joins the group: assign(), not subscribe(), so every replica reads every command.
            f"{self.settings.topic_prefix}serve-control-{self.instance}",
            **self._reporter.client_settings(),
            **{
                "client.id": f"{self.settings.topic_prefix}serve-{self.instance}-{self.model}-control",
                "enable.partition.eof": True,  # tells when the history has been read
            },
        )

        def waiting(problem: str, retry_in: float) -> None:
            self.log.warning(
                "command_topic_unavailable", topic=self.topic, error=problem, retry_in_s=retry_in
            )

        try:
            log_partition = open_command_log(
                consumer, self.topic, self.stop_event, self.settings.serve.retry_max_s, waiting
            )
        except BaseException:
            consumer.close()
            raise
        if log_partition is None:
            consumer.close()
            return None
        consumer.assign([log_partition])
        return consumer

    def _catch_up(self, consumer: Consumer) -> None:
        """Read the topic to its end (as of now) as history, then offer the last commanded version that
        loads."""
        # To its end by offset: a PARTITION_EOF alone may not come while commands keep coming (CatchUp).
        starts = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in consumer.assignment()]
        history = CatchUp.of(consumer, starts, self.stop_event)
        while not history.done and not self.stop_event.is_set():
            for msg in consumer.consume(500, timeout=0.2):
                err = msg.error()
                if err is None:
                    self.state.feed_command_raw(msg.value(), msg.offset())
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.log.warning("command_read_error", error=err.str())
                history.passed(msg)
            self.heartbeat()
        for command in reversed(self.state.history.activations()):
            version = command["model_version"]
            try:
                model = load_logged(self.registry, version, self.log)
            except Exception as exc:  # missing, tampered, unloadable: say so and try the one before it
                self._reject(command, f"{LOAD_FAILURE} {version}: {exc}")
                continue
            self.log.info("history_read", commands=len(self.state.applied), version=version)
            activation = Activation(version, model, command)
            experiment = self.state.experiment
            if experiment is not None and experiment.incumbent == version:
                trial = self._trial(experiment, self._command(experiment.command_id), None)
                if trial is not None:
                    activation = Activation(version, model, self._command(experiment.command_id), trial)
            self.slot.offer(activation, self.stop_event, idle=self.heartbeat)
            return
        self.log.warning(
            "no_model",
            message="no version was ever deployed (or none loads): waiting for a deploy command",
            commands=len(self.state.applied),
        )
        self.heartbeat(force=True)

    def _handle(self, value: bytes | None, offset: int | None = None) -> None:
        try:
            command = codec("model-command").decode(value)
        except ContractError as exc:
            self._reject(None, str(exc))
            return
        if not self.state.concerns(command):
            return  # another model's: that model's control (here or on another replica) obeys it
        self.log.info(
            "command",
            command_id=command["command_id"],
            action=command["action"],
            version=command["model_version"],
            age_ms=int(time.time() * 1000) - command["ts"],
        )
        reason = self.state.judge(command)
        if reason is not None:
            self._reject(command, reason)
            return
        self.state.feed_command(command, offset)
        action, version, active = command["action"], command["model_version"], self.slot.active
        if action not in ACTIVATING:  # an experiment starts or ends beside the active version
            if active is None:
                self._reject(command, f"no active version here to run the {action} of {version} beside")
                return
            trial = None
            experiment = self.state.experiment
            if action in STARTING and experiment is not None:
                trial = self._trial(experiment, command, active.trial)
                if trial is None:
                    return  # rejected: the incumbent keeps serving alone
            self.slot.offer(
                Activation(active.version, active.model, command, trial), self.stop_event, idle=self.heartbeat
            )
            return
        if active is not None and active.version == version:
            model = active.model  # already serving it: obey (and acknowledge) without reloading
        elif active is not None and active.trial is not None and active.trial.experiment.candidate == version:
            model = active.trial.model  # a promote: the candidate is loaded and verified already
        else:
            self.log.info("loading", version=version, command_id=command["command_id"])
            try:
                model = load_logged(self.registry, version, self.log)
            except Exception as exc:  # the registry verifies before unpickling; anything else is refused too
                self._reject(command, f"{LOAD_FAILURE} {version}: {exc}")
                return
        self.slot.offer(Activation(version, model, command), self.stop_event, idle=self.heartbeat)

    def _command(self, command_id: str) -> dict[str, Any]:
        return next(c for c in self.state.applied if c["command_id"] == command_id)

    def _trial(self, experiment: Experiment, command: dict[str, Any], running: Trial | None) -> Trial | None:
        """The experiment with its candidate loaded (reused from ``running`` when it is the same version),
        or ``None`` after rejecting ``command`` because the candidate would not load."""
        candidate = experiment.candidate
        if running is not None and running.experiment.candidate == candidate:
            model = running.model
        else:
            self.log.info("loading", version=candidate, command_id=command["command_id"])
            try:
                model = load_logged(self.registry, candidate, self.log)
            except Exception as exc:  # as a deploy's: the registry verifies before unpickling
                self._reject(command, f"{LOAD_FAILURE} {candidate}: {exc}")
                return None
        return Trial(experiment, model, self.shadow if experiment.mode == "shadow" else None)
