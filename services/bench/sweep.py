"""The evidence behind the service's batch size: throughput and p99 latency of one replica per
``serve.batch_size``, on the same recorded requests.

A larger batch spreads the per-batch costs (one model call, one numpy pass) over more requests; at a
moderate rate batches stay small whatever the setting, so latency should not suffer from a large cap.
This measures both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.bench.latency import measure_latency
from services.bench.rig import Rig, caught_up, delete_group
from services.bench.throughput import measure, outputs_reached
from services.config import Settings
from services.sandbox.processes import ManagedProcess
from services.sandbox.world import World


@dataclass
class SweepPoint:
    batch_size: int
    per_s: float | None
    cpu_per_1000: float | None
    p99_ms: float | None  # at ``rate``
    rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_batch_sizes(
    rig: Rig,
    settings: Settings,
    world: World,
    sizes: tuple[int, ...],
    requests: int,
    rate: float,
    latency_s: float,
    timeout: float,
) -> list[SweepPoint]:
    """For each batch size: a fresh replica serves the recorded requests from the start, then another
    answers requests offered at ``rate``."""
    group = f"{settings.topic_prefix}serve"
    predictions = settings.topic("predictions")
    points = []
    for i, size in enumerate(sizes):
        delete_group(settings, group)
        args = ("--batch-size", str(size))

        def start(name: str = f"bench-sweep-{size}", args: tuple[str, ...] = args) -> ManagedProcess:
            return rig.serve(settings, name, *args)

        run = measure(
            f"service batch {size}",
            settings,
            start,
            predictions,
            outputs_reached(predictions, requests),
            timeout,
        )
        # A new replica first works off what is left (earlier latency runs' requests), then is measured.
        replica = rig.serve(settings, f"bench-sweep-latency-{size}", "--batch-size", str(size))
        try:
            replica.wait_for_log("event=assigned", 120)
            caught_up(settings, group, settings.topic("requests"), timeout)
            latency = measure_latency(settings, world, rate, latency_s, seed=200 + i)
        finally:
            replica.stop(30)
        points.append(SweepPoint(size, run.per_s, run.cpu_per_1000, latency.p99_ms, rate))
    return points
