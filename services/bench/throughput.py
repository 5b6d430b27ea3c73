"""Throughput of one contender (a child process) over the recorded requests: predictions per second and
CPU-seconds per 1,000 predictions.

The contender starts on a backlog: every request is already in the topic. Its start-up (imports, loading
the model, joining the group) is left out by timing the outputs themselves: the rate is the outputs after
the first over the time from the first output's timestamp to the last one's (producer timestamps, ms). The
child's CPU time is sampled while it runs and read over the same window. The outputs are then read back
(``read_committed``) and counted, so a contender that skipped or duplicated requests shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from confluent_kafka import KafkaError, TopicPartition

from schemas.errors import BenchmarkError, KafkaClientError
from services import kafka
from services.bench.cpu import CpuSampler
from services.bench.rig import OffsetProbe
from services.bench.stats import per_thousand, rate_of_timestamps
from services.config import Settings
from services.sandbox.processes import ManagedProcess


@dataclass
class Throughput:
    """One contender's run."""

    name: str
    outputs: int  # messages read back
    unique: int  # distinct request ids among them
    seconds: float  # first to last output
    per_s: float | None
    cpu_s: float | None  # the child's CPU over that window
    cpu_per_1000: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outputs:
    timestamps: list[int]
    request_ids: set[str]


def read_outputs(settings: Settings, topic: str, start: dict[int, int], timeout: float = 60.0) -> Outputs:
    """Every committed message of ``topic`` from the ``start`` offsets to the end: timestamps and ids."""
    consumer = kafka.consumer(
        settings,
        f"{settings.topic_prefix}bench-reader",
        **{"enable.partition.eof": True, "isolation.level": "read_committed"},  # what a reader sees
    )
    timestamps: list[int] = []
    ids: set[str] = set()
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        open_ = set(start)
        deadline = time.monotonic() + timeout
        while open_:
            if time.monotonic() > deadline:
                raise KafkaClientError(f"timed out reading back {topic}")
            for msg in consumer.consume(5000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_.discard(msg.partition())
                    continue
                timestamps.append(msg.timestamp()[1])
                value = msg.value()
                if value is not None:
                    ids.add(orjson.loads(value)["request_id"])
    finally:
        consumer.close()
    return Outputs(timestamps, ids)


def measure(
    name: str,
    settings: Settings,
    start: Callable[[], ManagedProcess],
    sink: str,
    done: Callable[[OffsetProbe, dict[int, int]], bool],
    timeout: float,
) -> Throughput:
    """Start a contender, wait until ``done(probe, sink_start_offsets)``, stop it, and time its outputs."""
    probe = OffsetProbe(settings)
    try:
        before = probe.ends(sink)
        proc = start()
        sampler = CpuSampler(proc.pid).start()
        deadline = time.monotonic() + timeout
        try:
            while not done(probe, before):
                if not proc.running and not done(probe, before):  # it may stop by itself when done
                    tail = proc.log().strip().splitlines()[-3:]
                    raise BenchmarkError(f"{name} exited ({proc.proc.returncode}) before it was done: {tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not finish within {timeout:.0f}s")
                time.sleep(0.05)  # polling two offsets: cheap, and the contender has the CPU
        finally:
            sampler.stop()
            proc.stop(30)
    finally:
        probe.close()
    out = read_outputs(settings, sink, before)
    per_s, seconds = rate_of_timestamps(out.timestamps)
    cpu = sampler.between(min(out.timestamps) / 1000, max(out.timestamps) / 1000) if out.timestamps else None
    return Throughput(
        name=name,
        outputs=len(out.timestamps),
        unique=len(out.request_ids),
        seconds=seconds,
        per_s=per_s,
        cpu_s=cpu,
        cpu_per_1000=per_thousand(cpu, len(out.timestamps) - 1),
    )


def best_of(runs: list[Throughput]) -> Throughput:
    """The fastest of several runs of one contender, with the lowest CPU per 1,000 any of them needed:
    on a shared machine other processes only ever slow a run down or make it cost more."""
    fastest = max(runs, key=lambda run: run.per_s or 0.0)
    cheapest = min((run.cpu_per_1000 for run in runs if run.cpu_per_1000 is not None), default=None)
    return replace(fastest, cpu_per_1000=cheapest)


def outputs_reached(topic: str, expected: int) -> Callable[[OffsetProbe, dict[int, int]], bool]:
    """Done when ``expected`` messages were written to ``topic`` since the start (no transactions)."""

    def done(probe: OffsetProbe, before: dict[int, int]) -> bool:
        ends = probe.ends(topic)
        return sum(ends[p] - before.get(p, 0) for p in ends) >= expected

    return done


def committed_through(
    settings: Settings, group: str, topic: str, ends: dict[int, int]
) -> Callable[[OffsetProbe, dict[int, int]], bool]:
    """Done when ``group`` has committed ``topic`` up to ``ends`` (transactions: their markers take
    offsets in the output, so outputs cannot be counted by offsets)."""
    group_probe = OffsetProbe(settings, group)

    def done(_probe: OffsetProbe, _before: dict[int, int]) -> bool:
        committed = group_probe.committed(topic, list(ends))
        finished = all(committed.get(p, 0) >= o for p, o in ends.items())
        if finished:
            group_probe.close()
        return finished

    return done
