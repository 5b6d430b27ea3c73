"""The monitor's throughput: labelled requests per second through the Faust worker, beside a plain
confluent-kafka consumer computing the same metrics over the same events.

N predictions and their outcomes are produced first. Then the worker (``modelwatch monitor``, a child
process) starts on that backlog. It emits a metrics event every ``emit_every_n`` labelled requests, and
each event says how many the version has counted so far (``total``); the rate is the growth of ``total``
between the first and the last metrics event, over their broker timestamps, so the worker's start-up
(imports, group join, table recovery) is left out.

The plain consumer is the monitor's own baseline (:mod:`services.bench.baseline`), run in this process: one
confluent-kafka consumer, the same :class:`streams.join.Joiner` per partition and the same
:class:`streams.tracker.VersionTracker`, so the same metrics; what it skips is what Faust adds for a
fleet of workers that survives crashes: the repartition of labelled requests through Kafka, the changelogs
of the join and the windows, and asyncio. Its rate is its labelled requests over the time from its first
event to its last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.errors import BenchmarkError
from services.bench import baseline, workload
from services.bench.cpu import CpuSampler
from services.bench.rig import Rig, stamp_on_append
from services.bench.stats import per_thousand, span_rate
from services.bench.tap import Tap
from services.config import Settings
from services.sandbox.world import World

VERSION = "bench-version"

#: Told how a long measurement goes (a line of text).
Say = Callable[[str], None]


@dataclass
class MonitorRun:
    name: str
    labelled: int
    seconds: float
    per_s: float | None
    cpu_s: float | None
    cpu_per_1000: float | None
    rss_mb: float | None = None  # resident memory once every labelled request was counted (Faust worker)

    @property
    def cpu_us_per_labelled(self) -> float | None:
        return None if self.cpu_per_1000 is None else self.cpu_per_1000 * 1000.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_us_per_labelled": self.cpu_us_per_labelled}


def monitor_config(path: Path, data_dir: Path, emit_every_n: int) -> Path:
    path.write_text(
        "[monitor]\n"
        f"emit_every_n = {emit_every_n}\n"
        "emit_every_s = 1.0\n"
        "count_window = 1000\n"
        f'data_dir = "{data_dir}"\n'
    )
    return path


#: Labelled requests made and produced at a time: a million at once would hold gigabytes of records.
CHUNK = 100_000


def prepare(rig: Rig, world: World, n: int, area: str = "mon", say: Say | None = None) -> Settings:
    """The area ``area`` with ``n`` predictions and their outcomes already in its topics.

    Event time moves at 1,000 requests/s and ends a minute before now: within the monitor's past
    tolerance (an hour) up to 3.5 million, and never in the future."""
    settings = rig.settings(area)
    rig.create(settings)
    stamp_on_append(settings, [settings.topic("metrics")])
    start_ms = int(time.time() * 1000) - 60_000 - n
    for first in range(0, n, CHUNK):
        size = min(CHUNK, n - first)
        # The first chunk is the traffic earlier runs measured (seed 5); the later ones add to it.
        predictions, outcomes = workload.labelled_traffic(
            world, size, VERSION, seed=5 + first // CHUNK, start_ms=start_ms + first, first=first
        )
        workload.produce_all(settings, settings.topic("predictions"), predictions)
        workload.produce_all(settings, settings.topic("outcomes"), outcomes)
        if say is not None and n > CHUNK:
            say(f"monitor traffic: {first + size:,} of {n:,} labelled requests produced")
    return settings


def faust_monitor(
    rig: Rig,
    settings: Settings,
    n: int,
    emit_every_n: int,
    timeout: float,
    env: dict[str, str] | None = None,
    say: Say | None = None,
    say_every_s: float = 60.0,
) -> MonitorRun:
    """Start the worker on the backlog and time it until its metrics cover all ``n`` labelled requests.

    ``env`` is added to the worker's environment: Faust reads its own settings there too (for example
    ``PRODUCER_LINGER``), which is how its knobs were tried. ``say`` hears the count every
    ``say_every_s``."""
    name = f"monitor-bench-{n}"
    config = monitor_config(rig.workdir / f"{name}.toml", rig.workdir / f"{name}-data", emit_every_n)
    tap = Tap(settings, ["metrics"])
    proc = rig.command(name, ["monitor", "--config", str(config)], settings, env)
    sampler = CpuSampler(proc.pid).start()
    started = time.monotonic()
    deadline, told = started + timeout, started
    rss = None
    try:
        while not _covered(tap, n):
            if say is not None and time.monotonic() - told >= say_every_s:
                told = time.monotonic()
                counted = max(
                    (int(e.value["total"]) for e in tap.of("metrics", model_version=VERSION)), default=0
                )
                say(
                    f"monitor (Faust): {counted:,} of {n:,} labelled counted after {told - started:.0f} s, "
                    f"resident {resident_mb(proc.pid) or 0:,.0f} MB"
                )
            if not proc.running:
                tail = proc.log().strip().splitlines()[-3:]
                raise BenchmarkError(
                    f"the monitor exited ({proc.proc.returncode}) before it was done: {tail}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the monitor did not count {n} labelled requests within {timeout:.0f}s")
            time.sleep(0.1)  # the tap reads in its own thread; this only checks its findings
        rss = resident_mb(proc.pid)
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
    return MonitorRun("faust", n, seconds, per_s, cpu, per_thousand(cpu, counted), rss)


def resident_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (Linux; ``None`` elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return None


def _covered(tap: Tap, n: int) -> bool:
    return any(int(e.value.get("total", 0)) >= n for e in tap.of("metrics", model_version=VERSION))


def plain_monitor(settings: Settings, n: int, emit_every_n: int) -> MonitorRun:
    """The monitor's plain baseline (:func:`.baseline.run`) in this process, on the same events with
    the same window settings; its CPU is this process's over the run."""
    same = settings.monitor.model_copy(update={"emit_every_n": emit_every_n, "count_window": 1000})
    cpu = time.process_time()
    run = baseline.run(settings.model_copy(update={"monitor": same}), max_events=2 * n)
    cpu = time.process_time() - cpu
    return MonitorRun(
        "plain", run.labelled, run.seconds, run.labelled_per_s, cpu, per_thousand(cpu, run.labelled)
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m services.bench.monitor N [N ...]``: the monitor's measurement alone, at each N labelled
    requests (the Faust worker, then the plain loop on the same events), on the broker ``modelwatch
    bench`` would use. Prints each run as JSON, resident memory included: a volume curve by hand."""
    import json
    import sys

    volumes = [int(arg) for arg in (argv if argv is not None else sys.argv[1:])]
    rig = Rig(Settings(), say=print)
    try:
        rig.start_broker()
        world = workload.world()
        for n in volumes:
            settings = prepare(rig, world, n, area=f"mon{n}", say=print)
            emit_every_n = max(100, n // 20)
            for run in (
                faust_monitor(rig, settings, n, emit_every_n, timeout=180 + n / 100, say=print),
                plain_monitor(settings, n, emit_every_n),
            ):
                print(json.dumps(run.as_dict()), flush=True)
    finally:
        rig.close()


if __name__ == "__main__":
    main()
