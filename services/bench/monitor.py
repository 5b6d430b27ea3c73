"""The monitor's throughput: labelled requests per second through the Faust worker, beside a plain
confluent-kafka consumer computing the same metrics over the same events.

N predictions and their outcomes are produced first. Then the worker (``modelwatch monitor``, a child
process) starts on that backlog. It emits a metrics event every ``emit_every_n`` labelled requests, and
each event says how many the version has counted so far (``total``); the rate is the growth of ``total``
between the first and the last metrics event, over their broker timestamps, so the worker's start-up
(imports, group join, table recovery) is left out.

The plain consumer (:func:`plain_monitor`, in this process) reads both topics with one confluent-kafka
consumer, joins them with the same :class:`streams.join.Joiner` per partition and counts with the same
:class:`streams.tracker.VersionTracker`, emitting the same metrics events; what it skips is what Faust
adds for a fleet of workers: the repartition of labelled requests through Kafka, the changelogs of the
join and the windows, and asyncio. Its rate is read the same way, between its first and last emission.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from schemas import codec
from services import kafka
from services.bench import workload
from services.bench.cpu import CpuSampler
from services.bench.rig import Rig, create_plain_topics, stamp_on_append
from services.bench.stats import per_thousand, span_rate
from services.bench.tap import Tap
from services.config import Settings
from services.world import World
from streams.alerts import no_baseline
from streams.join import DictStore, Joiner
from streams.tracker import TrackerConfig, VersionTracker

VERSION = "bench-version"


@dataclass
class MonitorRun:
    name: str
    labelled: int
    seconds: float
    per_s: float | None
    cpu_s: float | None
    cpu_per_1000: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def monitor_config(path: Path, data_dir: Path, emit_every_n: int) -> Path:
    path.write_text(
        "[monitor]\n"
        f"emit_every_n = {emit_every_n}\n"
        "emit_every_s = 1.0\n"
        "count_window = 1000\n"
        f'data_dir = "{data_dir}"\n'
    )
    return path


def prepare(rig: Rig, world: World, n: int) -> Settings:
    """The area ``mon`` with ``n`` predictions and their outcomes already in its topics."""
    settings = rig.settings("mon")
    rig.create(settings)
    stamp_on_append(settings, [settings.topic("metrics")])
    create_plain_topics(settings, [settings.topic("bench-plain-metrics")])
    predictions, outcomes = workload.labelled_traffic(world, n, VERSION)
    workload.produce_all(settings, settings.topic("predictions"), predictions)
    workload.produce_all(settings, settings.topic("outcomes"), outcomes)
    return settings


def faust_monitor(
    rig: Rig, settings: Settings, n: int, emit_every_n: int, timeout: float, env: dict[str, str] | None = None
) -> MonitorRun:
    """Start the worker on the backlog and time it until its metrics cover all ``n`` labelled requests."""
    config = monitor_config(
        rig.workdir / "monitor-bench.toml", rig.workdir / "monitor-bench-data", emit_every_n
    )
    tap = Tap(settings, ["metrics"])
    proc = rig.command("monitor-bench", ["monitor", "--config", str(config)], settings, env)
    sampler = CpuSampler(proc.pid).start()
    deadline = time.monotonic() + timeout
    try:
        while not _covered(tap, n):
            if not proc.running:
                tail = proc.log().strip().splitlines()[-3:]
                raise RuntimeError(f"the monitor exited ({proc.proc.returncode}) before it was done: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the monitor did not count {n} labelled requests within {timeout:.0f}s")
            time.sleep(0.1)  # the tap reads in its own thread; this only checks its findings
    finally:
        sampler.stop()
        proc.stop(30)
        tap.stop()
    points = sorted(
        {(e.ts_ms / 1000.0, int(e.value["total"])) for e in tap.of("metrics", model_version=VERSION)}
    )
    points = [p for p in points if p[1] <= n]
    per_s = span_rate(points)
    seconds = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    cpu = sampler.between(points[0][0], points[-1][0]) if len(points) > 1 else None
    counted = points[-1][1] - points[0][1] if points else 0
    return MonitorRun("faust", n, seconds, per_s, cpu, per_thousand(cpu, counted))


def _covered(tap: Tap, n: int) -> bool:
    return any(int(e.value.get("total", 0)) >= n for e in tap.of("metrics", model_version=VERSION))


def plain_monitor(settings: Settings, n: int, emit_every_n: int, timeout: float) -> MonitorRun:
    """The same join and windows, fed by one plain consumer in this process; metrics produced as the
    worker produces them."""
    m = settings.monitor
    config = TrackerConfig(count_window=1000, time_window_s=m.time_window_s, emit_every_n=emit_every_n)
    window_ms = int(m.label_window_s * 1000)
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}bench-plain-monitor")
    producer = kafka.producer(settings)
    sink = settings.topic("bench-plain-metrics")
    predictions_topic, outcomes_topic = settings.topic("predictions"), settings.topic("outcomes")
    parts = []
    for topic in (predictions_topic, outcomes_topic):
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
    consumer.assign(parts)
    joiners: dict[int, Joiner] = {}
    trackers: dict[str, VersionTracker] = {}
    prediction_codec, outcome_codec, metrics_codec = codec("prediction"), codec("outcome"), codec("metrics")
    points: list[tuple[float, int, float]] = []  # (wall s, labelled so far, CPU s)
    counted = 0
    deadline = time.monotonic() + timeout
    try:
        while counted < n:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the plain consumer did not count {n} labelled requests in {timeout:.0f}s"
                )
            for msg in consumer.consume(1000, timeout=0.1):
                if msg.error() is not None:
                    continue
                partition = msg.partition() or 0
                joiner = joiners.get(partition)
                if joiner is None:
                    joiner = joiners[partition] = Joiner(DictStore(), window_ms, m.unlabelled)
                if msg.topic() == predictions_topic:
                    labelled = joiner.prediction(prediction_codec.decode(msg.value()))
                else:
                    labelled = joiner.outcome(outcome_codec.decode(msg.value()))
                for item in labelled:
                    tracker = trackers.get(item.model_version)
                    if tracker is None:
                        tracker = trackers[item.model_version] = VersionTracker(item.model_version, config)
                    emission = tracker.add(item, None, no_baseline)
                    if emission is None:
                        continue
                    for event in emission.metrics:
                        producer.produce(sink, metrics_codec.encode(event), item.model_version)
                    counted = sum(t.total for t in trackers.values())
                    points.append((time.time(), counted, time.process_time()))
            producer.poll(0)
        producer.flush(30)
    finally:
        consumer.close()
    per_s = span_rate([(t, c) for t, c, _ in points])
    seconds = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    cpu = points[-1][2] - points[0][2] if len(points) > 1 else None
    return MonitorRun("plain", n, seconds, per_s, cpu, per_thousand(cpu, points[-1][1] - points[0][1]))
