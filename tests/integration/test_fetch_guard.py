"""A fetch left over from before a rebalance takes no records (streams.fetch_guard), on the real broker with
aiokafka and Faust's consumer-thread fetch. Without the guard, Faust's fetch takes them in each of the three
cases below, for a caller that drops them: the recovery stall seen once in the two-workers fault test."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import NewTopic
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from services import kafka
from services.config import Settings
from services.kafka.topics import ensure_topics
from streams import fetch_guard

RECORDS = 10


def test_a_fetch_of_a_past_generation_paused_or_stopped_takes_nothing(
    settings: Settings,
) -> None:
    fetch_guard.install()  # as the monitor does when it builds its app
    topic = settings.topic("fetch-guard")
    ensure_topics(settings, [NewTopic(topic, 1, 1)])
    asyncio.run(_scenario(settings, topic))


async def _scenario(settings: Settings, topic: str) -> None:
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        # Faust's consumer thread as the fetch reads it: the app's generation and the consumer's flow.
        thread = SimpleNamespace(
            app=SimpleNamespace(consumer_generation_id=2), consumer=SimpleNamespace(flow_active=True)
        )
        fetch = AIOKafkaConsumerThread._fetch_records

        # 1. A fetch asked in generation 2, still waiting when generation 3 begins and the records come.
        leftover = asyncio.create_task(fetch(thread, consumer, {tp}, timeout=2.0))
        await asyncio.sleep(0)  # its first step runs now: it notes generation 2, then waits for records
        thread.app.consumer_generation_id = 3
        await _produce_and_wait_fetched(settings, topic, consumer, tp, leftover, first=0)
        assert await leftover == {}
        taken = await fetch(thread, consumer, {tp}, timeout=5.0)
        assert [r.offset for r in taken[tp]] == list(range(RECORDS))

        # 2. A fetch of this generation while every partition is paused (an empty set of active ones,
        # which aiokafka would read as every partition).
        paused: set[TopicPartition] = set()
        leftover = asyncio.create_task(fetch(thread, consumer, paused, timeout=2.0))
        await _produce_and_wait_fetched(settings, topic, consumer, tp, leftover, first=RECORDS)
        assert await leftover == {}
        taken = await fetch(thread, consumer, {tp}, timeout=5.0)
        assert [r.offset for r in taken[tp]] == list(range(RECORDS, 2 * RECORDS))

        # 3. A fetch of this generation whose flow stops while it waits (a rebalance begins).
        leftover = asyncio.create_task(fetch(thread, consumer, {tp}, timeout=2.0))
        await asyncio.sleep(0)
        thread.consumer.flow_active = False
        await _produce_and_wait_fetched(settings, topic, consumer, tp, leftover, first=2 * RECORDS)
        assert await leftover == {}
        thread.consumer.flow_active = True
        taken = await fetch(thread, consumer, {tp}, timeout=5.0)
        assert [r.offset for r in taken[tp]] == list(range(2 * RECORDS, 3 * RECORDS))
    finally:
        await consumer.stop()


async def _produce_and_wait_fetched(
    settings: Settings, topic: str, consumer: AIOKafkaConsumer, tp: TopicPartition, leftover: Any, first: int
) -> None:
    """Write the next records and wait until aiokafka has fetched them, or the leftover fetch took them."""
    producer = kafka.producer(settings)
    for i in range(first, first + RECORDS):
        producer.produce(topic, f"record-{i}".encode(), b"k")
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 30
    while not (leftover.done() or tp in consumer._fetcher._records):
        assert time.monotonic() < deadline, "aiokafka never fetched the records"
        await asyncio.sleep(0.05)
