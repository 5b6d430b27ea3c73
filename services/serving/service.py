"""The prediction service: one replica's poll loop.

A replica waits for the broker (retrying with backoff, saying so), starts its :class:`Control` thread,
waits for a model (it consumes nothing without one), then joins the consumer group ``<prefix>serve`` on
the request topic and loops:

1. poll: wait up to ``poll_timeout_s`` for the first request, then take whatever else is already fetched,
   up to ``batch_size`` (``consume(n, timeout)`` would wait out its timeout for a full batch: at 1,000
   requests/s that is the whole latency budget);
2. between two batches, swap in a newly commanded model if one is ready, and acknowledge it;
3. decode and validate the batch (:mod:`~services.serving.intake`), dead-letter what is bad;
4. score every valid request in one call (:mod:`~services.serving.scoring`), dead-letter what the model
   fails on;
5. produce the predictions keyed by request_id, under the delivery mode's rules
   (:mod:`~services.serving.delivery`), and commit what is confirmed.

Steps 3-5 are :mod:`~services.serving.batches`; this module is the loop around them: the broker, the
control threads, the consumer group and its rebalances, the swaps between batches, the stop.

``stop`` (SIGTERM/SIGINT in the CLI) ends the loop after the batch in hand: its predictions are flushed,
offsets committed (or the transaction committed) and the consumer closed, which hands its partitions to
the other replicas at once.

Several models. A replica serves one or several models (``models``; default: ``model_name``), each with
its own :class:`Control` and :class:`ModelSlot`: its own active version, following only its model's
commands. Each request goes to the model its ``model`` field names (absent: the default model); a request
for a model this replica does not serve, or one with no version deployed yet, is dead-lettered with the
reason and the model named. Every prediction names its model.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from schemas.errors import ConfigError, ServingError
from services.config import Settings
from services.serving.batches import Batches, Counts
from services.serving.clients import replica_clients, wait_for_broker
from services.serving.control import Control
from services.serving.delivery import AtLeastOnce, Delivery
from services.serving.intake import Decoder
from services.serving.logs import EventLog, KafkaReporter
from services.serving.metrics import ServeMetrics
from services.serving.process import tune_gc_for_serving
from services.serving.slot import Activation, ModelSlot, ModelSource
from services.serving.transactions import ExactlyOnce

_INSTANCE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def default_instance() -> str:
    """``<host>-<pid>``: unique per process, so no two replicas share a transactional id by accident."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}"


class Service:
    """One prediction-service replica.

    Run it in this thread with :meth:`run` (until ``stop`` is set), or in the background with
    :meth:`start` / :meth:`stop`. ``modelwatch serve`` runs it in its own process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        exactly_once: bool = False,
        registry: ModelSource | None = None,
        own_process: bool = False,
        models: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        #: The models served, in the order given (default: the settings' model); each one's settings.
        self.models = list(dict.fromkeys(models)) or [settings.model_name]
        self.settings_of = {name: settings.for_model(name) for name in self.models}
        #: The replica is the whole process (``modelwatch serve``): it may tune the process's GC.
        self.own_process = own_process
        self.instance = instance or default_instance()
        if not _INSTANCE.match(self.instance):
            raise ConfigError(f"instance id {self.instance!r}: use 1-100 letters, digits, '.', '_' or '-'")
        self.exactly_once = exactly_once
        if registry is None:
            from services.registry import Registry

            self.registries: dict[str, ModelSource] = {
                name: Registry.from_settings(s) for name, s in self.settings_of.items()
            }
        else:  # one source for every model (tests)
            self.registries = dict.fromkeys(self.models, registry)
        self.registry = self.registries[self.models[0]]
        self.log = EventLog("serve", instance=self.instance)
        self.metrics = ServeMetrics()
        self.counts = Counts()
        self.slots = {name: ModelSlot() for name in self.models}
        self.slot = self.slots[self.models[0]]  # the first model's (the only one, usually)
        self.stop_event = threading.Event()
        self.serving = threading.Event()  # set once the replica has a model and has joined the group
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._partitions: set[int] = set()
        self.requests_topic = settings.topic("requests")
        #: The batch handling: decode, route, score, produce, count (and the predictions' clock).
        self.batches = Batches(settings, self.instance, self.slots, self.log, self.metrics, self.counts)

    # -- in-process control ---------------------------------------------------------------------------

    def start(self) -> Service:
        """Run in a background thread; :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self._run_captured, name=f"serve-{self.instance}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the batch in hand, commit, close; re-raise what ended the loop, if anything."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise ServingError(f"replica {self.instance} did not stop within {timeout:.0f}s")
        if self._error is not None:
            raise self._error

    def _run_captured(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self._error = exc

    @property
    def active_version(self) -> str | None:
        """The first model's active version."""
        active = self.slot.active
        return active.version if active else None

    def active_versions(self) -> dict[str, str | None]:
        """Each model served -> its active version (``None``: none deployed yet)."""
        return {name: (a.version if (a := slot.active) else None) for name, slot in self.slots.items()}

    # -- the loop -------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` (or :meth:`stop`) is set."""
        if stop is not None:
            self.stop_event = stop
        stop = self.stop_event
        serve = self.settings.serve
        self.log.info(
            "starting",
            mode="exactly-once" if self.exactly_once else "at-least-once",
            bootstrap=self.settings.bootstrap_servers,
            requests=self.requests_topic,
            group=self.group_id,
            batch_size=serve.batch_size,
            models=",".join(self.models),
        )
        if serve.metrics_port is not None:
            try:
                self.metrics.start_http(serve.metrics_port, ready=self.serving.is_set)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on port {serve.metrics_port}: {exc}") from exc
            self.log.info("metrics", port=serve.metrics_port)
        controls: dict[str, Control] = {}
        try:
            if not wait_for_broker(self.settings, stop, self.log):
                return
            for name in self.models:
                log = self.log if len(self.models) == 1 else self.log.bind(model=name)
                controls[name] = Control(
                    self.settings_of[name],
                    self.instance,
                    self.registries[name],
                    self.slots[name],
                    log,
                    self.metrics,
                    stop,
                )
                controls[name].start()
            # Every model's history read and its starting version (if any) swapped in, and one model to
            # serve: a model never deployed has its requests dead-lettered until its first deploy.
            while not stop.is_set() and not (
                all(c.ready.is_set() for c in controls.values())
                and any(slot.active is not None for slot in self.slots.values())
            ):
                self.slot.wait_offered(0.1)  # wakes at the first model's offer, else after 0.1 s
                self._swap_pending(controls)
                self._check(controls)
            if stop.is_set():
                return
            self._serve(controls, stop)
        finally:
            stop.set()
            for control in controls.values():
                control.join(30)
            self.metrics.stop_http()
            self.log.info("stopped", **vars(self.counts))

    @property
    def group_id(self) -> str:
        return f"{self.settings.topic_prefix}serve"

    def _check(self, controls: dict[str, Control]) -> None:
        for control in controls.values():
            if control.failure is not None:
                raise ServingError(f"the control thread failed: {control.failure}") from control.failure

    def _swap_pending(self, controls: dict[str, Control]) -> None:
        """Between two batches: swap in every model's newly commanded version."""
        for name, slot in self.slots.items():
            if slot.pending is not None:
                self._swap(slot, controls[name])

    def _set_partitions(self, controls: dict[str, Control]) -> None:
        for control in controls.values():
            control.partitions = sorted(self._partitions)

    def _swap(self, slot: ModelSlot, control: Control) -> None:
        activation: Activation = slot.swap()
        # Strictly later than every prediction so far, and no later than any to come: the ack's ts
        # separates the versions.
        control.acknowledge(activation, self.batches.ack_ts())

    def _serve(self, controls: dict[str, Control], stop: threading.Event) -> None:
        serve = self.settings.serve
        reporter = KafkaReporter(self.log.bind(client="serve"))
        consumer, make_producer = replica_clients(
            self.settings, self.group_id, self.instance, reporter, exactly_once=self.exactly_once
        )
        delivery: Delivery
        if self.exactly_once:
            eos = ExactlyOnce(
                consumer,
                make_producer,
                self.log,
                self.metrics,
                serve.transaction_ms,
                stop,
                retry_max_s=serve.retry_max_s,
            )
            eos.init()
            delivery = eos
        else:
            delivery = AtLeastOnce(
                consumer,
                make_producer(),
                self.requests_topic,
                self.log,
                self.metrics,
                stop,
                retry_max_s=serve.retry_max_s,
            )

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            self._partitions.update(tp.partition for tp in partitions)
            self._set_partitions(controls)
            self.log.info("assigned", partitions=",".join(str(tp.partition) for tp in partitions))
            delivery.on_assign(c, partitions)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            delivery.on_revoke(c, partitions)
            self._partitions.difference_update(tp.partition for tp in partitions)
            self._set_partitions(controls)
            self.log.info("revoked", partitions=",".join(str(tp.partition) for tp in partitions))

        def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
            delivery.on_lost(c, partitions)
            self._partitions.difference_update(tp.partition for tp in partitions)
            self._set_partitions(controls)
            self.log.warning("lost", partitions=",".join(str(tp.partition) for tp in partitions))

        consumer.subscribe([self.requests_topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        self.serving.set()
        m = self.settings.monitor  # the contract's time tolerances, which the monitor applies to outcomes
        decoder = Decoder(int(m.future_tolerance_s * 1000), int(m.past_tolerance * 1000))
        if decoder.fast_path_off:  # correct, but every request meets the full validator
            self.log.warning("fast_request_check_off", why="; ".join(decoder.fast_path_off))
        handle = self.batches.handle
        closed = False
        if self.own_process:
            tune_gc_for_serving()  # the model and the clients are loaded by now
        try:
            while not stop.is_set():
                messages = self._poll(consumer, serve.batch_size, serve.poll_timeout_s)
                self._swap_pending(controls)
                if messages:
                    # The delivery's producer: exactly-once may replace one that hung.
                    handle(messages, decoder, delivery.producer, delivery)
                delivery.tick()
                self._check(controls)
            delivery.close()
            consumer.close()  # leaves the group now: the others take the partitions without waiting
            closed = True
        finally:
            if not closed:
                # Leaving on an error: nothing more is committed (what was is safe); just let go.
                with contextlib.suppress(KafkaException, RuntimeError):
                    consumer.close()
            self._partitions.clear()
            self._set_partitions(controls)
            self.serving.clear()

    @staticmethod
    def _poll(consumer: Consumer, batch_size: int, timeout: float) -> list[Message]:
        first = consumer.poll(timeout)
        if first is None:
            return []
        if batch_size == 1:
            return [first]
        rest = consumer.consume(batch_size - 1, 0)
        rest.insert(0, first)
        return rest


def serve(
    settings: Settings,
    *,
    instance: str | None = None,
    exactly_once: bool = False,
    stop: threading.Event | None = None,
    models: Sequence[str] = (),
) -> Counts:
    """Run one replica of ``models`` (default: the settings' model) in this thread until ``stop`` is set;
    what the CLI and subprocess tests call."""
    service = Service(settings, instance=instance, exactly_once=exactly_once, own_process=True, models=models)
    service.run(stop)
    return service.counts
