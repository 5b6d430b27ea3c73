"""How cost grows with volume: the monitor's CPU per labelled request and resident memory at each volume
(the Faust worker beside the plain loop on the same events), and the service's CPU per prediction at each
volume (``modelwatch serve`` beside the pass-through on the same recorded requests). Each point is taken on
fresh topics, and its topics are deleted as soon as it is measured (a million records weigh gigabytes).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from services.bench import workload
from services.bench.monitor import MonitorRun, faust_monitor, plain_monitor, prepare, produce_traffic
from services.bench.rig import Rig, delete_prefixed, stamp_on_append
from services.bench.stats import ratio
from services.bench.throughput import Throughput, measure, outputs_reached
from services.deployment import orders as deployment
from services.registry import Registry
from services.sandbox.world import World

Say = Callable[[str], None]


def _silent(_text: str) -> None:
    return None


def _us(cpu_per_1000: float | None) -> float | None:
    return None if cpu_per_1000 is None else cpu_per_1000 * 1000.0


@dataclass
class MonitorPoint:
    labelled: int
    faust: MonitorRun | None  # None: the worker was not run
    plain: MonitorRun

    def as_dict(self) -> dict[str, Any]:
        faust_us = self.faust.cpu_us_per_labelled if self.faust else None
        return {
            "labelled": self.labelled,
            "faust": self.faust.as_dict() if self.faust else None,
            "plain": self.plain.as_dict(),
            # How many times cheaper the Faust worker is than the plain loop (below 1: dearer).
            "faust_vs_plain_cpu": ratio(self.plain.cpu_us_per_labelled, faust_us),
        }


@dataclass
class ServicePoint:
    requests: int
    service: Throughput
    passthrough: Throughput

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "service": self.service.as_dict(),
            "passthrough": self.passthrough.as_dict(),
            "service_cpu_us": _us(self.service.cpu_per_1000),
            "passthrough_cpu_us": _us(self.passthrough.cpu_per_1000),
            "service_vs_passthrough_cpu": ratio(self.passthrough.cpu_per_1000, self.service.cpu_per_1000),
        }


def monitor_curve(
    rig: Rig,
    world: World,
    volumes: Sequence[int],
    faust: bool,
    step: Say = _silent,
    say: Say = _silent,
) -> list[MonitorPoint]:
    """The Faust worker (if ``faust``) and the plain loop on ``n`` labelled requests, for each volume."""
    points = []
    for n in volumes:
        step(f"monitor at {n:,} labelled")
        settings = prepare(rig, area=f"mon{n}")
        emit_every_n = max(100, n // 20)
        traffic = partial(produce_traffic, settings, world, n, say)
        worker = None
        if faust:  # the worker is started first, then the traffic produced (services.bench.monitor)
            worker = faust_monitor(
                rig, settings, n, emit_every_n, timeout=180 + n / 200, traffic=traffic, say=say
            )
        else:
            traffic()
        gc.collect()
        points.append(MonitorPoint(n, worker, plain_monitor(settings, n, emit_every_n)))
        if n > 100_000:
            delete_prefixed(settings, settings.topic_prefix)
    return points


def service_curve(
    rig: Rig, world: World, version: str, volumes: Sequence[int], step: Say = _silent, say: Say = _silent
) -> list[ServicePoint]:
    """``modelwatch serve`` and the pass-through on ``n`` freshly recorded requests, for each volume."""
    points = []
    contenders = "services.bench.contenders"
    for n in volumes:
        step(f"service at {n:,} requests")
        settings = rig.settings(f"serve{n}")
        sink = settings.topic("bench-passthrough")
        rig.create(settings, [sink])
        stamp_on_append(settings, [settings.topic("predictions")])
        deployment.deploy(settings, version, "bench: volume", registry=Registry(rig.registry))
        requests_topic, chunk = settings.topic("requests"), 20_000
        for start in range(0, n, chunk):
            batch = workload.requests(world, min(chunk, n - start), seed=1 + start, tag=f"v{start}")
            workload.produce_all(settings, requests_topic, workload.encode_requests(batch))
            if n > 100_000 and (start + chunk) % 200_000 == 0:
                say(f"service at {n:,}: {start + chunk:,} requests recorded")
        timeout = 120 + n / 500
        args = ["passthrough", "--source", requests_topic, "--sink", sink]
        args += ["--group", f"{settings.topic_prefix}bench-passthrough"]
        passthrough = measure(
            "pass-through",
            settings,
            partial(rig.module, f"passthrough-{n}", contenders, args, settings),
            sink,
            outputs_reached(sink, n),
            timeout,
        )
        predictions = settings.topic("predictions")
        service = measure(
            "service",
            settings,
            partial(rig.serve, settings, f"bench-volume-{n}"),
            predictions,
            outputs_reached(predictions, n),
            timeout,
        )
        points.append(ServicePoint(n, service, passthrough))
        delete_prefixed(settings, settings.topic_prefix)
    return points


def curve_figures(monitor: Sequence[MonitorPoint], service: Sequence[ServicePoint]) -> dict[str, Any]:
    """The flat figures of both curves (``..._at_<volume>``) and the growth ratios the targets judge."""
    out: dict[str, Any] = {}
    for point in monitor:
        n = point.labelled
        out[f"monitor_cpu_us_at_{n}"] = point.faust.cpu_us_per_labelled if point.faust else None
        out[f"monitor_rss_mb_at_{n}"] = point.faust.rss_mb if point.faust else None
        out[f"monitor_raw_cpu_us_at_{n}"] = point.plain.cpu_us_per_labelled
    for sp in service:
        figures = sp.as_dict()
        for key in ("service_cpu_us", "passthrough_cpu_us", "service_vs_passthrough_cpu"):
            out[f"{key}_at_{sp.requests}"] = figures[key]
    out["monitor_cost_1m_vs_20k"] = ratio(
        out.get("monitor_cpu_us_at_1000000"), out.get("monitor_cpu_us_at_20000")
    )
    out["monitor_rss_1m_vs_100k"] = ratio(
        out.get("monitor_rss_mb_at_1000000"), out.get("monitor_rss_mb_at_100000")
    )
    return out
