"""The monitor's source reader (:mod:`streams.source_reader`) on the real broker, without Faust: where it
starts, and that it commits a batch only once the batch's bundles are on the broker."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from services import kafka
from services.config import Settings
from streams.offsets import committed_offsets
from streams.routing import Router, decode_bundle
from streams.source_reader import SourceReader
from tests.integration.monitor_support import Storefront, topic_world, traffic, wait_for

PARTITIONS = 3


@pytest.fixture
def settings(kafka_bootstrap: str) -> Iterator[Settings]:
    with topic_world(kafka_bootstrap, PARTITIONS) as s:
        yield s


def joinable(settings: Settings, config: dict[str, str] | None = None) -> str:
    name = f"{settings.monitor_app_id}-joinable"
    admin = kafka.admin(settings)  # held until the answer: a destroyed client fails its futures
    admin.create_topics([NewTopic(name, PARTITIONS, 1, config=config or {})])[name].result(30)
    return name


def reader(settings: Settings, topic: str) -> SourceReader:
    router = Router(PARTITIONS, future_ms=300_000, past_ms=3_600_000, prediction_past_ms=86_400_000,
                    idle_timeout_s=60.0)  # fmt: skip
    return SourceReader(settings, router, topic)


def routed(settings: Settings, topic: str) -> list[str]:
    """The request ids of every event on the joinable topic."""
    return [
        e["request_id"]
        for _, value, _ in kafka.read_topic(settings, topic)
        if value is not None
        for e in decode_bundle(value)[0]
    ]


def predictions(settings: Settings, n: int) -> dict[str, tuple[int, int]]:
    """``n`` predictions produced; each request id's (partition, offset)."""
    reqs = traffic("v1", n, seed=3, t0=int(time.time() * 1000) - 5_000, step_ms=10, hit=0.5, miss=0.1)
    Storefront(settings).predictions(reqs)
    at: dict[str, tuple[int, int]] = {}
    for msg in kafka.read_messages(settings, settings.topic("predictions"), timeout=30):
        at[str(orjson.loads(msg.value() or b"{}")["request_id"])] = (msg.partition(), msg.offset())
    assert len(at) == n
    return at


def test_a_new_route_group_starts_where_the_faust_group_had_committed(settings: Settings) -> None:
    """Upgraded from a monitor whose route agent read the sources in the Faust group: the reader's own group
    has no offsets yet, and starts at the Faust group's, so what was routed before is not routed again."""
    at = predictions(settings, 60)
    topic = settings.topic("predictions")
    start = {p: 5 for p in range(PARTITIONS)}
    old = kafka.consumer(settings, settings.monitor_app_id)
    old.commit(offsets=[TopicPartition(topic, p, o) for p, o in start.items()], asynchronous=False)
    old.close()
    name = joinable(settings)
    r = reader(settings, name)
    r.start()
    try:
        expected = sorted(rid for rid, (p, o) in at.items() if o >= start[p])
        wait_for(lambda: sorted(routed(settings, name)) == expected, 60, f"{len(expected)} requests routed")
        ends = {(topic, p): max(o for q, o in at.values() if q == p) + 1 for p in range(PARTITIONS)}
        wait_for(
            lambda: committed_offsets(settings, settings.monitor_route_group, ends) == ends,
            30,
            "the reader's group to commit what it routed",
        )
    finally:
        r.stop()


def test_a_batch_is_committed_only_once_its_bundles_are_on_the_broker(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The joinable topic refuses the bundles (too large for it): the reader commits nothing and routes the
    same messages again once the topic takes them, so none is lost."""
    caplog.set_level(logging.WARNING, logger="modelwatch.monitor")
    at = predictions(settings, 12)
    name = joinable(settings, {"max.message.bytes": "200"})
    r = reader(settings, name)
    r.start()
    try:
        wait_for(lambda: "sending bundles" in caplog.text, 60, "the reader to fail to send its bundles")
        topic = settings.topic("predictions")
        pairs = [(topic, p) for p in range(PARTITIONS)]
        assert committed_offsets(settings, settings.monitor_route_group, pairs) == {}
        assert routed(settings, name) == []
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        resource.add_incremental_config(
            ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
        )
        admin = kafka.admin(settings)
        admin.incremental_alter_configs([resource])[resource].result(30)
        wait_for(lambda: sorted(set(routed(settings, name))) == sorted(at), 90, "every request routed")
    finally:
        r.stop()


def test_a_backlog_is_fetched_only_so_far_ahead_of_what_is_routed(settings: Settings) -> None:
    """On a backlog the reader fetches ahead while a batch waits for every partition with messages left;
    a partition holding ``batch_size`` fetched messages is paused until it is down to half of that, so the
    reader never holds more than two batches' worth per partition, however long the backlog. Without the
    pause it held the backlog: 330,000 messages on the bench's million requests."""
    n, batch = 12_000, 50
    reqs = traffic("v1", n, seed=4, t0=int(time.time() * 1000) - 60_000, step_ms=1, hit=0.5, miss=0.1)
    Storefront(settings).predictions(reqs)
    small = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"batch_size": batch})})
    name = joinable(settings)
    r = reader(small, name)
    r.start()
    try:
        wait_for(lambda: r.routed >= n, 120, f"{n} predictions routed")
    finally:
        r.stop()
    assert sorted(set(routed(settings, name))) == sorted(q.request_id for q in reqs)  # none skipped
    assert 0 < r.most_held <= 2 * batch * PARTITIONS


def test_paused_partitions_are_read_again_after_a_rebalance(settings: Settings) -> None:
    """A second reader joins the group in the middle of a backlog, while the first has partitions paused:
    whoever owns a partition afterwards reads it to its end (a pause left behind would stop it for good)."""
    n, batch = 12_000, 50
    reqs = traffic("v1", n, seed=5, t0=int(time.time() * 1000) - 60_000, step_ms=1, hit=0.5, miss=0.1)
    Storefront(settings).predictions(reqs)
    small = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"batch_size": batch})})
    name = joinable(settings)
    first, second = reader(small, name), reader(small, name)
    first.start()
    try:
        # Partitions held full come and go as batches drain them: one is paused when the group rebalances
        # more often than not, not every time (librdkafka's fetches decide).
        wait_for(lambda: first.routed >= 1_000 and bool(first._paused), 60, "a partition paused")
        second.start()
        wait_for(
            lambda: set(routed(settings, name)) >= {q.request_id for q in reqs}, 120, "every request routed"
        )
    finally:
        second.stop()
        first.stop()
    assert second.routed > 0  # the group did rebalance


def test_a_reader_taking_one_message_a_batch_reads_every_partition_to_its_end(settings: Settings) -> None:
    """``batch_size`` 1: a partition is paused as soon as it holds a message, and resumed once it holds
    none (half of one, rounded down), not never."""
    at = predictions(settings, 30)
    small = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"batch_size": 1})})
    name = joinable(settings)
    r = reader(small, name)
    r.start()
    try:
        wait_for(lambda: sorted(set(routed(settings, name))) == sorted(at), 60, "every request routed")
    finally:
        r.stop()
