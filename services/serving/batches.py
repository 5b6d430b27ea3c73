"""Answering a batch of requests: the replica's hot path, from polled messages to produced predictions.

One call of :meth:`Batches.handle` per polled batch:

1. decode and validate the batch (:mod:`~services.serving.intake`), dead-letter what is bad;
2. route each request to the model its ``model`` field names and score each model's requests in one call
   (:mod:`~services.serving.models`, :mod:`~services.serving.scoring`), dead-letter what the model fails
   on, what names a model this replica does not serve, or one with no version deployed yet;
3. produce the predictions keyed by request_id, and the dead letters, under the delivery mode's rules
   (:mod:`~services.serving.delivery`); every prediction names its model and the version that made it;
4. count what was done (:class:`Counts`, and the Prometheus metrics).

Batches also keep the predictions' clock (:meth:`Batches.ack_ts`): a swapped-in version's
acknowledgement is stamped strictly later than every prediction so far and no later than any to come, so
its ``ts`` separates the two versions' predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaException, Message, Producer

from services.config import Settings
from services.serving.clients import produce_when_room
from services.serving.delivery import Delivery
from services.serving.intake import Decoder
from services.serving.logs import EventLog
from services.serving.metrics import ServeMetrics
from services.serving.models import route
from services.serving.slot import ModelSlot


@dataclass
class Counts:
    """What a replica has done so far (the Prometheus metrics say the same, for people)."""

    requests: int = 0
    predictions: int = 0
    dead_letters: int = 0
    batches: int = 0


class Batches:
    """One replica's batch handling: its models' slots, its output topics, its counts and its clock.

    Poll loop only (:class:`~services.serving.service.Service`): nothing here is locked.
    """

    def __init__(
        self,
        settings: Settings,
        instance: str,
        slots: dict[str, ModelSlot],
        log: EventLog,
        metrics: ServeMetrics,
        counts: Counts,
    ) -> None:
        self.settings, self.instance, self.slots = settings, instance, slots
        self.log, self.metrics, self.counts = log, metrics, counts
        self.predictions_topic = settings.topic("predictions")
        self.dlq_topic = settings.topic("requests.dlq")
        self._last_ts = 0

    def ack_ts(self) -> int:
        """The ``ts`` of a swapped-in version's acknowledgement: strictly later than every prediction so
        far, and no later than any to come (:meth:`handle` stamps its batch no earlier)."""
        self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        return self._last_ts

    def handle(
        self, messages: list[Message], decoder: Decoder, producer: Producer, delivery: Delivery
    ) -> None:
        arrived = time.perf_counter()
        intake = decoder.decode(messages)
        for problem in intake.errors:
            self.log.warning("consume_error", error=problem)
        requests, sources = intake.requests, intake.sources
        dead = intake.dead
        routed = route(
            requests,
            sources,
            dead,
            self.slots,
            self.settings.default_model,
            self.settings.serve.default_k,
            self.log,
        )
        model_dead = routed.failed

        callback = delivery.begin()
        produced = predictions = 0
        now_ms = max(int(time.time() * 1000), self._last_ts)
        self._last_ts = now_ms
        latency_ms = round((time.perf_counter() - arrived) * 1000.0, 3)
        instance, topic = self.instance, self.predictions_topic
        produce, dumps = producer.produce, orjson.dumps
        try:
            # One pass over parallel lists: no per-request indexing.
            for request, version, scores, selected, model in zip(
                requests, routed.versions, routed.scores, routed.selected, routed.models, strict=True
            ):
                if scores is None or selected is None:
                    continue
                items = request["items"]
                rid = request["request_id"]
                value = dumps(
                    {
                        "request_id": rid,
                        "user_id": request["user_id"],
                        "model_version": version,  # a canary's candidate, or the active version
                        "scores": dict(zip(items, scores, strict=False)),  # lengths checked in scoring
                        "recommended": [items[j] for j in selected],
                        "instance": instance,
                        "ts": now_ms,
                        "request_ts": request["ts"],  # the storefront's clock: the join's event time
                        "latency_ms": latency_ms,
                        "model": model,
                    }
                )
                try:
                    produce(topic, value, rid, on_delivery=callback)
                except BufferError:
                    produce_when_room(producer, topic, value, rid, callback)
                produced += 1
            predictions = produced
            for key, value in dead:
                try:
                    produce(self.dlq_topic, value, key, on_delivery=callback)
                except BufferError:
                    produce_when_room(producer, self.dlq_topic, value, key, callback)
                produced += 1
        except KafkaException as exc:
            # The producer refused (a transaction in error, a fatal producer): the batch is redone.
            delivery.failed(exc.args[0])
        delivery.end(messages, produced)

        n = len(messages) - len(intake.errors)
        self.counts.requests += n
        self.counts.predictions += predictions
        self.counts.dead_letters += len(dead)
        self.counts.batches += 1
        m = self.metrics
        m.requests.inc(n)
        if predictions:
            for made_by, count in routed.made_by.items():
                m.predictions.labels(made_by).inc(count)
        contract_dead = len(dead) - model_dead - routed.unserved
        if contract_dead:
            m.dead_letters.labels("contract").inc(contract_dead)
        if model_dead:
            m.dead_letters.labels("model").inc(model_dead)
        if routed.unserved:
            m.dead_letters.labels("unserved_model").inc(routed.unserved)
        m.batch_size.observe(n)
        m.latency.observe(latency_ms / 1000.0, predictions)
