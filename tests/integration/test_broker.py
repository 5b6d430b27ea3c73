"""The local broker and the topic contract, on the real broker."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer

from schemas import codec, load_example
from schemas import topics as contract
from services import kafka
from services.config import Settings
from services.kafka.topics import create_topics


def test_topics_exist_with_co_partitioned_join(settings: Settings) -> None:
    meta = kafka.admin(settings).list_topics(timeout=10)
    names = {t.name(settings.topic_prefix): t for t in contract.ALL}
    assert set(names) <= set(meta.topics)
    parts = {n: len(meta.topics[n].partitions) for n in names}
    assert parts[settings.topic("requests")] == parts[settings.topic("predictions")] == 6
    assert parts[settings.topic("outcomes")] == 6
    # Idempotent: a second create changes nothing and says so.
    again = create_topics(settings)
    assert not any(s.created for s in again)
    # The cluster's default replication: the one test broker's, 1.
    assert {s.replication for s in again} == {1}


def test_an_event_round_trips_through_the_broker(settings: Settings) -> None:
    request = load_example("prediction-request") | {"request_id": uuid.uuid4().hex}
    p = kafka.producer(settings)
    p.produce(
        settings.topic("requests"), key=request["user_id"], value=codec("prediction-request").encode(request)
    )
    assert p.flush(10) == 0
    c: Consumer = kafka.consumer(settings, group_id=f"{settings.topic_prefix}roundtrip")
    c.subscribe([settings.topic("requests")])
    try:
        got = None
        for _ in range(50):
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got = codec("prediction-request").decode(msg.value())
                break
        assert got == request
    finally:
        c.close()


def test_read_topic_returns_everything_written(settings: Settings) -> None:
    p = kafka.producer(settings)
    topic = settings.topic("model-events")
    for i in range(25):
        p.produce(topic, key=f"i{i % 3}", value=str(i).encode())
    p.flush(10)
    got = kafka.read_topic(settings, topic)
    assert sorted(int(v) for _, v, _ in got if v is not None) == list(range(25))
