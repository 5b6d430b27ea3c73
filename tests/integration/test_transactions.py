"""Exactly-once delivery on the real broker: a transaction the broker makes abortable is aborted, redone
from the committed offsets by a new producer, and committed once; a read_committed reader sees each input
answered exactly once and nothing of the aborted attempt."""

from __future__ import annotations

import threading

from confluent_kafka import Message, Producer
from confluent_kafka.admin import NewTopic

from services import kafka
from services.config import Settings
from services.kafka.client import read_messages
from services.kafka.topics import ensure_topics
from services.serving.logs import EventLog
from services.serving.metrics import ServeMetrics
from services.serving.transactions import ExactlyOnce
from tests.integration.serving_support import wait_for

INPUTS = 40


def _poll_all(eos: ExactlyOnce, wanted: int, deadline_s: float = 30.0) -> list[Message]:
    got: list[Message] = []

    def more() -> bool:
        got.extend(m for m in eos.consumer.consume(100, timeout=0.2) if m.error() is None)
        eos.tick()
        return len(got) >= wanted

    wait_for(more, deadline_s, f"{wanted} inputs", every=0.0)
    return got


def test_an_aborted_transaction_is_redone_by_a_new_producer_and_committed_once(settings: Settings) -> None:
    """The redone work needs a new epoch: the old producer's sequences may be wrong after a failed send
    (see ExactlyOnce._fresh_epoch), so an abort must replace it."""
    inputs, outputs = settings.topic("requests"), settings.topic("predictions")
    # A topic that refuses anything over 1 KiB: a larger record fails on the broker, inside the
    # transaction, which makes the transaction abortable (the client's own limit is 1 MB).
    refusing = f"{settings.topic_prefix}refusing"
    ensure_topics(settings, [NewTopic(refusing, 1, 1, config={"max.message.bytes": "1024"})], timeout=30)
    feeder = kafka.producer(settings)
    for i in range(INPUTS):
        feeder.produce(inputs, f"in-{i}".encode(), f"k{i}".encode())
    assert feeder.flush(30) == 0

    group = f"{settings.topic_prefix}eos-test"
    consumer = kafka.consumer(settings, group)
    made: list[Producer] = []

    def make_producer() -> Producer:  # as the service does: one transactional id, a new producer each time
        made.append(kafka.producer(settings, **{"transactional.id": f"{group}-serve-1"}))
        return made[-1]

    eos = ExactlyOnce(consumer, make_producer, EventLog("serve-test"), ServeMetrics(), 100, threading.Event())
    try:
        eos.init()
        consumer.subscribe([inputs])
        first = _poll_all(eos, INPUTS)
        eos.begin()
        for m in first:
            eos.producer.produce(outputs, b"aborted-" + (m.value() or b""), m.key())
        eos.producer.produce(refusing, b"x" * 4096)  # refused by the broker: the transaction is doomed
        assert eos.commit() is False, "the broker refused a record, yet the transaction committed"
        assert len(made) == 2, "an abort must hand the redone work to a new producer (a new epoch)"

        # Rewound to the committed offsets (none yet: the beginning), the same inputs come again.
        again = _poll_all(eos, INPUTS)
        assert sorted(m.value() for m in again) == sorted(m.value() for m in first)
        eos.begin()
        for m in again:
            eos.producer.produce(outputs, b"done-" + (m.value() or b""), m.key())
        assert eos.commit() is True
    finally:
        eos.close()
        consumer.close()

    seen = [m.value() for m in read_messages(settings, outputs, **{"isolation.level": "read_committed"})]
    assert sorted(seen) == sorted(f"done-in-{i}".encode() for i in range(INPUTS))
