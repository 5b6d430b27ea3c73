"""End-to-end latency at a fixed offered rate: request produced to prediction consumed.

A paced producer (the storefront's producer settings) writes fresh requests at the rate; a reader in the
same process follows the prediction topic from its end (``read_committed``, as any downstream reader of
an exactly-once replica must) and notes when each prediction arrives. Both clocks are this process's
``time.time()``, so a latency is the difference of two readings of one clock; it includes both clients'
batching (the producer's ``linger.ms``, the reader's fetch), as a storefront would see it. The first
second is warm-up and left out of the percentiles.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from services import kafka
from services.bench import workload
from services.bench.cpu import cpu_pressure_us
from services.bench.stats import latency_summary, percentile
from services.config import Settings
from services.sandbox.world import World

WARMUP_S = 1.0


@dataclass
class Latency:
    rate: float  # offered, requests/s
    achieved: float  # what the paced producer managed
    seconds: float
    sent: int
    answered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    #: Where the time goes, p99 of each leg: inside the replica (its ``latency_ms``: arrival to
    #: production), and from the broker appending the prediction to the reader receiving it.
    replica_p99_ms: float | None = None
    read_p99_ms: float | None = None
    #: Share of the measurement in which some task on this machine waited for a CPU (Linux PSI): the tail
    #: of a latency measured on a shared machine moves with it.
    cpu_pressure_pct: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PredictionReader:
    """Follows the prediction topic from its current end and notes each prediction's arrival time."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.tag = tag.encode()
        self.arrived: dict[str, tuple[float, int, float]] = {}  # id -> (arrival s, append ms, replica ms)
        self._stop = threading.Event()
        topic = settings.topic("predictions")
        self.consumer = kafka.consumer(
            settings,
            f"{settings.topic_prefix}bench-latency",
            **{
                "isolation.level": "read_committed",  # an exactly-once replica's readers must
                "fetch.wait.max.ms": 5,  # the reader should add as little as it can to what it measures
            },
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign(
            [TopicPartition(topic, p, kafka.watermarks(self.consumer, topic, p)[1]) for p in meta.partitions]
        )
        self._thread = threading.Thread(target=self._run, name="latency-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        arrived, tag, loads = self.arrived, self.tag, orjson.loads
        try:
            while not self._stop.is_set():
                first = self.consumer.poll(0.1)
                if first is None:
                    continue
                now = time.time()
                for msg in [first, *self.consumer.consume(1000, 0)]:
                    value = msg.value()
                    if msg.error() is not None or value is None or tag not in value:
                        continue
                    prediction = loads(value)
                    arrived.setdefault(
                        prediction["request_id"],
                        (now, msg.timestamp()[1], prediction.get("latency_ms") or 0.0),
                    )
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def measure_latency(
    settings: Settings, world: World, rate: float, seconds: float, seed: int, drain_s: float = 10.0
) -> Latency:
    """Offer ``rate`` requests/s for ``seconds`` to a running replica; latencies of what it answered."""
    tag = f"lat{int(rate)}x{seed}"
    n = max(1, int(rate * seconds))
    records = workload.encode_requests(workload.requests(world, n, seed=seed, tag=tag))
    ids = [f"{tag}-{i}" for i in range(n)]
    sent = [0.0] * n
    reader = PredictionReader(settings, tag)

    def on_send(i: int, at: float) -> None:
        sent[i] = at

    pressure, started = cpu_pressure_us(), time.monotonic()
    try:
        achieved = workload.paced(settings, settings.topic("requests"), records, rate, on_send)
        deadline = time.monotonic() + drain_s
        while len(reader.arrived) < n and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting out the last predictions, bounded by drain_s
    finally:
        reader.stop()
    pressure_end = cpu_pressure_us()
    busy = None
    if pressure is not None and pressure_end is not None:
        busy = (pressure_end - pressure) / 1e4 / (time.monotonic() - started)
    start = sent[0] + WARMUP_S
    measured = [
        (at, reader.arrived[rid])
        for rid, at in zip(ids, sent, strict=True)
        if at >= start and rid in reader.arrived
    ]
    summary = latency_summary([(got[0] - at) * 1000.0 for at, got in measured])
    return Latency(
        rate=rate,
        achieved=achieved,
        seconds=seconds,
        sent=n,
        answered=sum(1 for rid in ids if rid in reader.arrived),
        p50_ms=summary["p50_ms"],
        p99_ms=summary["p99_ms"],
        max_ms=summary["max_ms"],
        replica_p99_ms=percentile([got[2] for _, got in measured], 99),
        read_p99_ms=percentile([got[0] * 1000.0 - got[1] for _, got in measured], 99),
        cpu_pressure_pct=busy,
    )
