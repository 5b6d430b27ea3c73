"""A replica's Kafka clients: waiting for the broker, the consumer and producer it serves with, and a
produce that waits for room.

Every setting that differs from librdkafka's default says why beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from services import kafka
from services.config import Settings
from services.kafka.retry import NotYet, backoff_s, retry
from services.serving.delivery import DeliveryCallback
from services.serving.logs import EventLog, KafkaReporter


def wait_for_broker(settings: Settings, stop: threading.Event, log: EventLog) -> bool:
    """Block until the cluster answers, retrying with exponential backoff and saying so; False if stopped."""
    # A quiet client: its connection failures are reported here, once per attempt, not by librdkafka.
    client = AdminClient(kafka.client_config(settings, log_level=0, error_cb=lambda _e: None))
    retry_max_s = settings.serve.retry_max_s

    def reach(attempt: int) -> bool:
        if not client.list_topics(timeout=min(5.0, 1.0 + backoff_s(attempt, retry_max_s))).brokers:
            raise NotYet("no brokers in metadata")
        if attempt > 1:
            log.info("broker_reachable", bootstrap=settings.bootstrap_servers, attempts=attempt)
        return True

    def unreachable(attempt: int, wait_s: float, error: BaseException) -> None:
        problem = error.args[0].str() if isinstance(error, KafkaException) else str(error)
        log.warning(
            "broker_unreachable",
            bootstrap=settings.bootstrap_servers,
            attempt=attempt,
            retry_in_s=wait_s,
            error=problem,
        )

    reached = retry(
        reach,
        retry_on=(KafkaException,),
        retry_max_s=retry_max_s,
        on_retry=unreachable,
        stop=stop,
    )
    return bool(reached)


def replica_clients(
    settings: Settings,
    group_id: str,
    instance: str,
    reporter: KafkaReporter,
    *,
    exactly_once: bool,
) -> tuple[Consumer, Callable[[], Producer]]:
    """The replica's consumer in the serve group, and how to make its producer (exactly-once may replace
    one that hung)."""
    serve = settings.serve
    consumer_settings: dict[str, Any] = {
        **reporter.client_settings(),
        "client.id": f"{group_id}-{instance}",
        "session.timeout.ms": serve.session_timeout_ms,  # how soon a dead replica's partitions move
        "heartbeat.interval.ms": max(serve.session_timeout_ms // 3, 100),  # three beats per session
        "max.poll.interval.ms": serve.max_poll_interval_ms,  # a slow model's batch is not a dead replica
    }
    if serve.gather_ms > 0:
        # At a live pace a fetch answered at the first request makes batches of one or two, and each
        # batch costs a model call, a produce wake-up, a store and metrics: the broker holds a fetch
        # up to gather_ms, or until it has gather_bytes (a backlog has them at once; 1,000/s in ms).
        consumer_settings["fetch.wait.max.ms"] = serve.gather_ms
        consumer_settings["fetch.min.bytes"] = serve.gather_bytes
    if exactly_once:
        # Offsets go in the transactions; requests are read committed (the librdkafka default).
        consumer_settings["enable.auto.commit"] = False
    else:
        consumer_settings.update(
            {
                "enable.auto.commit": True,  # commits in the background what we stored...
                "enable.auto.offset.store": False,  # ...which is only what the broker acknowledged
                "auto.commit.interval.ms": serve.commit_interval_ms,
            }
        )
    consumer = kafka.consumer(settings, group_id, **consumer_settings)
    producer_settings: dict[str, Any] = {
        **reporter.client_settings(),
        "client.id": f"{group_id}-{instance}",
    }
    if exactly_once:
        producer_settings.update(
            {
                # Unique per replica and prefix: a restarted replica fences its former self.
                "transactional.id": f"{group_id}-{instance}",
                # A killed replica's open transaction blocks its partitions' next owner until it expires.
                "transaction.timeout.ms": serve.transaction_timeout_ms,
            }
        )
    return consumer, lambda: kafka.producer(settings, **producer_settings)


def produce_when_room(
    producer: Producer, topic: str, value: bytes, key: bytes | str | None, callback: DeliveryCallback | None
) -> None:
    """Produce, serving delivery reports until the local queue has room (the broker is slow or away)."""
    while True:
        producer.poll(0.1)
        try:
            producer.produce(topic, value, key, on_delivery=callback)
            return
        except BufferError:
            continue
