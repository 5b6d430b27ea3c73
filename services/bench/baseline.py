"""The same per-version metrics without Faust: a plain confluent-kafka consumer loop.

The benchmark compares the Faust monitor with this. Both run the same join (:mod:`streams.join`) and the
same windows (:mod:`streams.tracker`), so they emit the same metrics on the same events; what differs is
the transport and the durability: this loop keeps its state in memory (its trackers keep no changelog
blocks), commits nothing and survives no crash, and joins in one place instead of repartitioning by
request_id. A source partition counts as idle while it is at its end (the consumer's partition EOF), where
the monitor waits ``idle_timeout_s``.
It reads predictions and outcomes from the beginning and stops when the topics have been idle.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError

from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from streams.join import Joiner, Labelled
from streams.join_store import DictStore
from streams.routing import Router
from streams.tracker import TrackerConfig, VersionTracker


def metrics_of(labelled: Iterable[Labelled], config: TrackerConfig) -> list[dict[str, Any]]:
    """The metrics events the monitor emits every ``emit_every_n`` labelled requests of each version."""
    trackers: dict[str, VersionTracker] = {}
    out: list[dict[str, Any]] = []
    for item in labelled:
        emission = _tracker(trackers, item.model_version, config).add(item)
        if emission is not None:
            out += emission.metrics
    return out


def _tracker(trackers: dict[str, VersionTracker], version: str, config: TrackerConfig) -> VersionTracker:
    """The version's tracker, made on its first request; kept in memory only (no changelog blocks)."""
    tracker = trackers.get(version)
    if tracker is None:
        tracker = trackers[version] = VersionTracker(version, config, durable=False)
    return tracker


@dataclass
class Run:
    events: int = 0  # predictions and outcomes read
    labelled: int = 0
    invalid: int = 0
    seconds: float = 0.0  # from the first event read to the last
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labelled_per_s(self) -> float:
        return self.labelled / self.seconds if self.seconds else 0.0


def run(settings: Settings, idle_s: float = 2.0, batch: int = 1000, max_events: int | None = None) -> Run:
    """Consume predictions and outcomes from the beginning, join, count, until ``idle_s`` without events."""
    m = settings.monitor
    config = TrackerConfig.from_settings(m, ())
    joiner = Joiner(
        DictStore(),
        int(m.label_window_s * 1000),
        m.unlabelled,
        out_of_order_ms=int(m.out_of_order * 1000),
        past_tolerance_ms=int(m.past_tolerance * 1000),
        prediction_wait_ms=int(m.prediction_wait_s * 1000),
    )
    router = Router(
        1,
        future_ms=int(m.future_tolerance_s * 1000),
        past_ms=int(m.past_tolerance * 1000),
        prediction_past_ms=int(m.prediction_wait_s * 1000),
        idle_timeout_s=m.idle_timeout_s,
    )
    trackers: dict[str, VersionTracker] = {}
    predictions, outcomes = settings.topic("predictions"), settings.topic("outcomes")
    consumer = kafka.consumer(
        settings,
        f"{settings.topic_prefix}monitor-baseline-{uuid.uuid4().hex[:8]}",  # a fresh group: from the start
        **{
            "fetch.max.bytes": 50 * 1024 * 1024,  # big fetches: this loop measures throughput
            "enable.partition.eof": True,  # a partition at its end is idle: it holds no clock back
        },
    )
    meta = consumer.list_topics(timeout=10)
    counts = {name: len(meta.topics[name].partitions) for name in (predictions, outcomes)}
    joiner.clocks.predictions.partitions = counts[predictions]
    joiner.clocks.outcomes.partitions = counts[outcomes]
    result = Run()
    started: float | None = None
    last = time.monotonic()
    try:
        consumer.subscribe([predictions, outcomes])
        while time.monotonic() - last < idle_s and (max_events is None or result.events < max_events):
            messages = consumer.consume(batch, timeout=0.2)
            for msg in messages:
                err = msg.error()
                topic = msg.topic() or ""
                stream = "predictions" if topic == predictions else "outcomes"
                partition = msg.partition() or 0
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaClientError(f"baseline consumer: {err.str()}")
                    now_ms = int(time.time() * 1000)
                    labelled = joiner.report(stream, partition, -1, True, counts[topic], now_ms)
                else:
                    started = started or time.monotonic()
                    last = time.monotonic()
                    result.events += 1
                    _type, broker_ms = msg.timestamp()
                    if router.route(stream, partition, counts[topic], broker_ms, msg.value()) is not None:
                        result.invalid += 1
                        continue
                    labelled = [item for e in router.take() for item in joiner.event(e)]
                for item in labelled:
                    result.labelled += 1
                    emission = _tracker(trackers, item.model_version, config).add(item)
                    if emission is not None:
                        result.metrics += emission.metrics
        result.seconds = (last - started) if started else 0.0
        return result
    finally:
        consumer.close()
