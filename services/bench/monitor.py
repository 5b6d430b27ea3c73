"""The monitor's throughput: labelled requests per second through the Faust worker, beside a plain
confluent-kafka consumer computing the same metrics over the same events.

The worker (``modelwatch monitor``, a child process) starts first, on empty topics, and is measured from
the moment it is ready (it has logged :data:`streams.READY` and its CPU has settled): then N
predictions and their outcomes are produced, the predictions first, at the broker's pace, far faster than
the worker reads them, so it works through a backlog. It emits a metrics event every ``emit_every_n``
labelled requests, each saying how many the version has counted so far (``total``); the run ends at the
event that reaches N. Its CPU per labelled request is the worker's CPU over that span, over N; its rate,
N over the span. So start-up (imports, group join, table recovery) is left out, and all the work the
traffic caused is in.

An earlier version started the worker on the backlog and timed it between its first and its last metrics
event. That left out everything before the first labelled request was counted: on the bench's backlog
most of the join's work (at 20,000 labelled, 47-146 µs a labelled request reported where the worker
spent about 500), and a varying share of it, which made the cost look as if it grew fivefold with volume.

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
from functools import partial
from pathlib import Path
from typing import Any

from schemas.errors import BenchmarkError
from services.bench import baseline, workload
from services.bench.cpu import CpuSampler, process_cpu_seconds
from services.bench.memory_accounts import read_accounts
from services.bench.rig import Rig, stamp_on_append
from services.bench.stats import per_thousand, ratio
from services.bench.tap import Tap
from services.config import Settings
from services.sandbox.world import World
from streams import READY

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
    startup_cpu_s: float | None = None  # the worker's CPU until it was ready, left out of the figures above
    #: The worker's memory accounts (:mod:`services.bench.memory_accounts`) last read before ``rss_mb``.
    memory: dict[str, Any] | None = None

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


#: Seconds between the worker's memory accounts: the last is at most this old when its memory is read.
ACCOUNTS_EVERY_S = 1.0

#: Labelled requests made and produced at a time: a million at once would hold gigabytes of records.
CHUNK = 100_000


def prepare(rig: Rig, area: str = "mon") -> Settings:
    """The area ``area``: its topics, created empty."""
    settings = rig.settings(area)
    rig.create(settings)
    stamp_on_append(settings, [settings.topic("metrics")])
    return settings


def produce_traffic(settings: Settings, world: World, n: int, say: Say | None = None) -> None:
    """``n`` predictions and their outcomes into the area's topics, ``CHUNK`` at a time (each chunk's
    predictions, then its outcomes).

    Event time moves at 1,000 requests/s and ends a minute before now: within the monitor's past
    tolerance (an hour) up to 3.5 million, and never in the future."""
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


def faust_monitor(
    rig: Rig,
    settings: Settings,
    n: int,
    emit_every_n: int,
    timeout: float,
    traffic: Callable[[], None],
    env: dict[str, str] | None = None,
    say: Say | None = None,
    say_every_s: float = 60.0,
) -> MonitorRun:
    """Start the worker, wait until it is ready, call ``traffic`` (which produces the ``n`` labelled
    requests) and time the worker until its metrics cover all of them.

    ``env`` is added to the worker's environment: Faust reads its own settings there too (for example
    ``PRODUCER_LINGER``), which is how its knobs were tried. ``say`` hears the count every
    ``say_every_s``."""
    name = f"monitor-bench-{n}"
    config = monitor_config(rig.workdir / f"{name}.toml", rig.workdir / f"{name}-data", emit_every_n)
    tap = Tap(settings, ["metrics"])
    accounts = rig.workdir / f"{name}-memory.jsonl"
    every = ["--memory-accounts", str(accounts), "--trace-every", f"{ACCOUNTS_EVERY_S:g}"]
    proc = rig.command(name, ["monitor", "--config", str(config), *every], settings, env)
    sampler = CpuSampler(proc.pid).start()
    rss = memory = None
    try:
        proc.wait_for_log(READY, min(timeout, 180.0))
        startup_cpu = _settled_cpu(proc.pid)
        started = time.time()
        traffic()
        deadline, told = time.monotonic() + timeout, time.monotonic()
        while not _covered(tap, n):
            if say is not None and time.monotonic() - told >= say_every_s:
                told = time.monotonic()
                counted = max(
                    (int(e.value["total"]) for e in tap.of("metrics", model_version=VERSION)), default=0
                )
                say(
                    f"monitor (Faust): {counted:,} of {n:,} labelled counted after "
                    f"{time.time() - started:.0f} s, resident {resident_mb(proc.pid) or 0:,.0f} MB"
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
        read = read_accounts(accounts) if accounts.exists() else []
        memory = read[-1] if read else None
    finally:
        sampler.stop()
        proc.stop(30)
        tap.stop()
    ended = min(
        e.ts_ms / 1000.0 for e in tap.of("metrics", model_version=VERSION) if int(e.value["total"]) >= n
    )
    seconds = ended - started
    cpu = sampler.between(started, ended)
    return MonitorRun(
        "faust", n, seconds, ratio(n, seconds), cpu, per_thousand(cpu, n), rss, startup_cpu, memory
    )


def _settled_cpu(pid: int, quiet_s: float = 1.0, most: float = 0.05, timeout: float = 30.0) -> float | None:
    """The CPU-seconds ``pid`` has used once it is quiet: less than ``most`` of a core over ``quiet_s``
    (a ready worker still finishes its start-up: the command history, its first timers). Gives up waiting
    after ``timeout`` (a busy machine): what it has used then."""
    deadline = time.monotonic() + timeout
    before = process_cpu_seconds(pid)
    while True:
        time.sleep(quiet_s)
        now = process_cpu_seconds(pid)
        if now is None or before is None or now - before < most * quiet_s or time.monotonic() > deadline:
            return now
        before = now


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
            settings = prepare(rig, area=f"mon{n}")
            emit_every_n = max(100, n // 20)
            traffic = partial(produce_traffic, settings, world, n, print)
            for run in (
                faust_monitor(
                    rig, settings, n, emit_every_n, timeout=180 + n / 100, traffic=traffic, say=print
                ),
                plain_monitor(settings, n, emit_every_n),
            ):
                print(json.dumps(run.as_dict()), flush=True)
    finally:
        rig.close()


if __name__ == "__main__":
    main()
