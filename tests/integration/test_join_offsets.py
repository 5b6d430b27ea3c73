"""The join takes every message of its joinable partitions, and the watch every message of its labelled
partitions, also one their consumer passed over.

Around a rebalance, Faust's consumer can move the group's offset past a joinable message no agent saw
(:mod:`streams.offsets`; seen with two workers, one SIGKILLed: tests/faults/test_monitor_workers.py). This
puts a worker in that state deterministically: a joinable message is written while the monitor is stopped
and the group's offset is committed past it; the restarted join must still join its requests.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from schemas import codec
from schemas.metrics import request_counts
from services import kafka
from services.config import Settings
from streams.labelled import Labelled, encode_bundle
from streams.routing import Router, partition_of
from tests.integration.monitor_support import (
    QUICK_MONITOR,
    MonitorProcess,
    Storefront,
    read_events,
    topic_world,
    traffic,
    wait_for,
    write_config,
)

PARTITIONS = 3
W = 1000  # label window, ms
MONITOR = {**QUICK_MONITOR, "label_window_s": W / 1000, "count_window": 100, "time_window_s": 5,
           "emit_every_n": 10, "commit_interval_s": 0.5}  # fmt: skip


def total(settings: Settings, version: str) -> int:
    events = read_events(settings, "metrics", "metrics")
    return max((m["total"] for m in events if m["model_version"] == version), default=0)


def joinable_bundle(settings: Settings, partition: int, n: int) -> tuple[bytes, int]:
    """One joinable message for ``partition``: ``n`` requests of version ``skipped``, each prediction with
    its outcome, as the source reader writes them."""
    now = int(time.time() * 1000)
    reqs = [
        r
        for r in traffic("skipped", 20 * n, seed=7, t0=now, step_ms=1, hit=0, miss=0, exact=(1, 0))
        if partition_of(r.request_id, PARTITIONS) == partition
    ][:n]
    router = Router(PARTITIONS, future_ms=300_000, past_ms=3_600_000, prediction_past_ms=86_400_000,
                    idle_timeout_s=60.0)  # fmt: skip
    for r in reqs:
        prediction, outcome = codec("prediction").encode(r.prediction()), codec("outcome").encode(r.outcome())
        assert router.route("predictions", 0, PARTITIONS, now, prediction) is None
        assert router.route("outcomes", 0, PARTITIONS, now, outcome) is None
    return dict(router.bundles())[partition], len(reqs)


def counted_then_stopped(settings: Settings, tmp_path: Path) -> tuple[MonitorProcess, Storefront]:
    """A monitor that counted 60 requests of version ``before`` and was stopped with SIGTERM: its state
    (the join's and the windows', with their next offsets) and its offsets committed."""
    monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, []), tmp_path)
    storefront = Storefront(settings)
    monitor.start()
    try:
        before = traffic("before", 60, seed=1, t0=int(time.time() * 1000), step_ms=10, hit=0, miss=0,
                         exact=(1, 0))  # fmt: skip
        storefront.predictions(before)
        storefront.outcomes(before)
        storefront.tick(before[-1].ts + 2 * W, PARTITIONS)
        wait_for(lambda: total(settings, "before") == 60, 60, "the first traffic counted", every=0.2)
    finally:
        monitor.stop()
    return monitor, storefront


def written_and_passed_over(
    settings: Settings, topic: str, partition: int, value: bytes, key: bytes | None = None
) -> int:
    """Write one message to ``topic[partition]`` and commit the monitor's group past it, as Faust's consumer
    left a partition in the fault test; return its offset."""
    delivered: list[Any] = []
    producer = kafka.producer(settings)
    producer.produce(topic, key=key, value=value, partition=partition,
                     on_delivery=lambda _, msg: delivered.append(msg))  # fmt: skip
    assert producer.flush(30) == 0 and delivered[0].error() is None
    offset: int = delivered[0].offset()
    group = kafka.consumer(settings, f"{settings.topic_prefix}monitor")
    try:
        group.commit(offsets=[TopicPartition(topic, partition, offset + 1)], asynchronous=False)
    finally:
        group.close()
    return offset


def test_a_joinable_message_the_consumer_passed_over_is_joined(kafka_bootstrap: str, tmp_path: Path) -> None:
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor, _ = counted_then_stopped(settings, tmp_path)

        # A joinable message the group's offset passes over, as the consumer left it in the fault test.
        topic, partition = f"{settings.topic_prefix}monitor-joinable", 1
        value, n = joinable_bundle(settings, partition, 30)
        passed_over = written_and_passed_over(settings, topic, partition, value)

        monitor.start()
        try:
            wait_for(lambda: total(settings, "skipped") == n, 60, "the passed-over requests joined")
        finally:
            monitor.stop()
        # The gap starts at the message, or before it: the source reader may have sent its last reports
        # on the sources while the stopping worker's join no longer took them.
        said = re.findall(
            rf"joinable partition {partition}: the consumer passed over offsets (\d+)\.\.(\d+)", monitor.log()
        )
        assert any(int(a) <= passed_over <= int(b) for a, b in said), said


def test_a_labelled_message_the_consumer_passed_over_is_counted(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The watch's guard: a labelled message written while the monitor is stopped, the group's offset
    committed past it (as Faust's consumer left the survivor's labelled partition in the fault test); the
    restarted watch reads it from the broker and counts it."""
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor, storefront = counted_then_stopped(settings, tmp_path)

        topic = f"{settings.topic_prefix}monitor-labelled"
        [partition] = {m.partition() for m in kafka.read_messages(settings, topic)}  # the version's
        now = int(time.time() * 1000)
        counts = request_counts(["a", "b"], ["a"], ["a"])
        items = [Labelled(f"late-{i}", "before", now + i, counts) for i in range(25)]
        passed_over = written_and_passed_over(settings, topic, partition, encode_bundle(items), b"before")

        monitor.start()
        try:
            # The next labelled message of the partition shows the gap (a labelled partition has no timer).
            after = traffic("before", 20, seed=2, t0=now + 1000, step_ms=10, hit=0, miss=0, exact=(1, 0))
            storefront.predictions(after)
            storefront.outcomes(after)
            storefront.tick(after[-1].ts + 2 * W, PARTITIONS)
            wait_for(lambda: total(settings, "before") == 105, 60, "the passed-over labelled ones counted")
        finally:
            monitor.stop()
        said = f"monitor-labelled partition {partition}: the consumer passed over offsets {passed_over}.."
        assert said in monitor.log()
