"""The same per-version metrics without Faust: a plain confluent-kafka consumer loop.

The benchmark compares the Faust monitor with this. Both run the same join (:mod:`streams.join`) and the
same windows (:mod:`streams.tracker`), so they emit the same metrics on the same events; what differs is
the transport and the durability: this loop keeps its state in memory, commits nothing and survives no
crash. It reads predictions and outcomes from the beginning and stops when the topics have been idle.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError

from schemas import codec
from schemas.errors import ContractError, KafkaClientError
from services import kafka
from services.config import Settings
from streams.join import DictStore, Joiner, Labelled
from streams.tracker import TrackerConfig, VersionTracker


def metrics_of(labelled: Iterable[Labelled], config: TrackerConfig) -> list[dict[str, Any]]:
    """The metrics events the monitor emits every ``emit_every_n`` labelled requests of each version."""
    trackers: dict[str, VersionTracker] = {}
    out: list[dict[str, Any]] = []
    for item in labelled:
        tracker = trackers.get(item.model_version)
        if tracker is None:
            tracker = trackers[item.model_version] = VersionTracker(item.model_version, config)
        emission = tracker.add(item)
        if emission is not None:
            out += emission.metrics
    return out


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
    window_ms = int(m.label_window_s * 1000)
    joiners: dict[int, Joiner] = {}
    trackers: dict[str, VersionTracker] = {}
    predictions, outcomes = settings.topic("predictions"), settings.topic("outcomes")
    consumer = kafka.consumer(
        settings,
        f"{settings.topic_prefix}monitor-baseline-{uuid.uuid4().hex[:8]}",  # a fresh group: from the start
        **{"fetch.max.bytes": 50 * 1024 * 1024},  # big fetches: this loop measures throughput
    )
    result = Run()
    started: float | None = None
    last = time.monotonic()
    try:
        consumer.subscribe([predictions, outcomes])
        while time.monotonic() - last < idle_s and (max_events is None or result.events < max_events):
            messages = consumer.consume(batch, timeout=0.2)
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaClientError(f"baseline consumer: {err.str()}")
                    continue
                started = started or time.monotonic()
                last = time.monotonic()
                result.events += 1
                # Joined per partition, as in the monitor: predictions and outcomes are co-partitioned.
                partition = msg.partition() or 0
                joiner = joiners.get(partition)
                if joiner is None:
                    joiner = joiners[partition] = Joiner(DictStore(), window_ms, m.unlabelled)
                try:
                    if msg.topic() == predictions:
                        out = joiner.prediction(codec("prediction").decode(msg.value()))
                    else:
                        out = joiner.outcome(codec("outcome").decode(msg.value()))
                except ContractError:
                    result.invalid += 1
                    continue
                for item in out:
                    tracker = trackers.get(item.model_version)
                    if tracker is None:
                        tracker = trackers[item.model_version] = VersionTracker(item.model_version, config)
                    result.labelled += 1
                    emission = tracker.add(item)
                    if emission is not None:
                        result.metrics += emission.metrics
        result.seconds = (last - started) if started else 0.0
        return result
    finally:
        consumer.close()
