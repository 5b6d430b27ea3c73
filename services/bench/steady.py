"""A replica's and the monitor's cost at a steady offered rate: the share of a core each uses, how their
memory moves, and how far the monitor lags.

A backlog hides per-batch cost (a batch of 500 spreads it thin); a storefront's live pace does not (at
300 requests/s a batch holds one or two requests). One replica of ``modelwatch serve`` (in a subprocess,
default settings) serves the storefront simulator (:func:`services.sandbox.storefront.simulate`: 20
candidates per request, the default k of 5, outcomes too) at ``rate`` for ``seconds``; measured:

- idle first, for ``idle_s``: the replica's share of a core with no traffic (its polls, heartbeats,
  the clients' background threads);
- then under load, after a warm-up: its user+system CPU from ``/proc`` over the window, as a share of one
  core and per request answered in the window, and its resident memory sampled every second, with the
  least-squares slope (MB per minute) and the first and last readings.

The window's requests are the predictions written in it (the prediction topic's end offsets), so a replica
that fell behind shows as answering fewer than were offered.

With ``monitor``, the Faust worker (``modelwatch monitor``, default settings, a child process) runs beside
the replica on the same traffic, as in production, and is measured the same way (its ``/proc`` CPU and
resident memory, idle and under load, CPU per request answered), plus its consumer group's lag on the
prediction and outcome topics, sampled twice a second over the window (committed offsets: the lag includes
up to ``monitor.commit_interval_s`` of traffic), in messages and in seconds of the offered traffic (a
request makes two messages, its prediction and its outcome). The soak (:func:`run_soak`) is the same run,
longer, after a longer warm-up.

With ``experiment``, the replica serves the same traffic with an experiment running beside the active
version: a canary (a share of users answered by the candidate) or a shadow (every request also scored by
the candidate, on the replica's shadow thread, into ``predictions.shadow``, counted too): the serving cost
of each, beside the plain run at the same rate in the same benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.bench.cpu import process_cpu_seconds
from services.bench.live import LagSampler
from services.bench.rig import OffsetProbe, Rig
from services.bench.stats import least_squares_slope, percentile, ratio
from services.config import Settings
from services.deployment import orders as deployment
from services.registry import Registry
from services.sandbox.processes import wait_for
from services.sandbox.storefront import SimulationPlan, simulate
from streams import READY

#: Told how a long run goes (a line of text).
Progress = Callable[[str], None]


def resident_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (VmRSS), ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@dataclass
class SteadyRun:
    rate: float
    seconds: float
    idle_cpu_share: float | None = None
    cpu_share: float | None = None  # of one core, over the measured window
    requests: int = 0  # predictions written in the window
    answered_per_s: float | None = None
    cpu_us_per_request: float | None = None
    rss_first_mb: float | None = None
    rss_last_mb: float | None = None
    rss_slope_mb_per_min: float | None = None
    rss_max_mb: float | None = None
    #: The reading farthest from the first, as a share of the first (0.1: within 10% all along).
    rss_drift: float | None = None
    shadow_predictions: int = 0  # written to predictions.shadow in the window
    #: "plain", "canary <traffic>" or "shadow".
    mode: str = "plain"
    warmup_s: float = 0.0
    #: The Faust monitor ran beside the replica and was measured (the ``monitor_`` and ``lag_`` fields).
    monitor: bool = False
    monitor_idle_cpu_share: float | None = None
    monitor_cpu_share: float | None = None
    monitor_cpu_us_per_request: float | None = None  # the monitor's CPU over the requests answered
    #: Requests the monitor worked off in the window (its committed offsets, two messages a request), and
    #: its CPU over them: the same as above when it keeps up, its real cost per request when it does not.
    monitor_requests_worked: int = 0
    monitor_cpu_us_per_worked: float | None = None
    monitor_rss_first_mb: float | None = None
    monitor_rss_last_mb: float | None = None
    monitor_rss_max_mb: float | None = None
    monitor_rss_slope_mb_per_min: float | None = None
    monitor_rss_drift: float | None = None
    lag_samples: int = 0
    lag_p50_messages: float | None = None
    lag_max_messages: float | None = None
    lag_p50_s: float | None = None  # messages over the offered 2 x rate (a prediction and an outcome)
    lag_max_s: float | None = None
    lag_last_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_figures(readings: Sequence[tuple[float, float]], prefix: str = "") -> dict[str, float | None]:
    """First, last and largest of ``(seconds, MB)`` readings, their least-squares slope in MB per minute,
    and the drift (the reading farthest from the first, over the first); keys named as in
    :class:`SteadyRun`, after ``prefix``."""
    values = [mb for _, mb in readings]
    slope = least_squares_slope(readings)
    first = values[0] if values else None
    return {
        f"{prefix}rss_first_mb": first,
        f"{prefix}rss_last_mb": values[-1] if values else None,
        f"{prefix}rss_max_mb": max(values) if values else None,
        f"{prefix}rss_slope_mb_per_min": None if slope is None else slope * 60.0,
        f"{prefix}rss_drift": ratio(max((abs(v - first) for v in values), default=0.0), first)
        if first is not None
        else None,
    }


def lag_figures(samples: Sequence[float], rate: float) -> dict[str, Any]:
    """The monitor's lag samples (messages) as p50, max and last, in messages and in seconds of traffic
    offered at ``rate`` requests/s (two messages each: the prediction and its outcome)."""
    per_s = 2.0 * rate
    p50 = percentile(samples, 50)
    top = max(samples) if samples else None
    return {
        "lag_samples": len(samples),
        "lag_p50_messages": p50,
        "lag_max_messages": top,
        "lag_p50_s": ratio(p50, per_s),
        "lag_max_s": ratio(top, per_s),
        "lag_last_s": ratio(samples[-1], per_s) if samples else None,
    }


def _cpu(pids: Mapping[str, int]) -> dict[str, float | None]:
    return {name: process_cpu_seconds(pid) for name, pid in pids.items()}


def _shares(
    pids: Mapping[str, int],
    before: Mapping[str, float | None],
    after: Mapping[str, float | None],
    wall: float,
) -> dict[str, float | None]:
    """Each process's share of one core between two CPU readings ``wall`` seconds apart."""
    out: dict[str, float | None] = {}
    for name in pids:
        a, b = before.get(name), after.get(name)
        out[name] = None if a is None or b is None else ratio(b - a, wall)
    return out


def _produced(probe: OffsetProbe, topic: str) -> int:
    return sum(probe.ends(topic).values())


def _wait(pause: threading.Event, seconds: float, progress: Progress | None, every: float, what: str) -> None:
    """Wait ``seconds``, saying ``what`` and the time left every ``every`` seconds."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        pause.wait(min(every, left))
        if progress is not None and end - time.monotonic() > 1:
            progress(f"{what}: {(end - time.monotonic()) / 60:.1f} min left")


def run_steady(
    rig: Rig,
    version: str,
    rate: float,
    seconds: float,
    warmup_s: float = 5.0,
    idle_s: float = 5.0,
    timeout: float = 90.0,
    experiment: tuple[str, float | None] | None = None,
    monitor: bool = False,
    progress: Progress | None = None,
    progress_every_s: float = 60.0,
    monitor_args: Sequence[str] = (),
) -> SteadyRun:
    """One replica at a steady ``rate`` for ``seconds`` (after ``warmup_s``), with ``experiment`` (a
    candidate version and a canary's traffic, or None for a shadow) running, and with ``monitor`` the
    Faust worker beside it; see the module's docstring. ``progress`` hears how the run goes every
    ``progress_every_s`` (the soak's minutes); ``monitor_args`` are added to the monitor's command line."""
    mode = "plain"
    if experiment is not None:
        mode = "shadow" if experiment[1] is None else f"canary {experiment[1]:g}"
    tag = "" if experiment is None else "-" + mode.split()[0]
    settings: Settings = rig.settings(f"steady{int(rate)}{tag}")
    rig.create(settings)
    result = SteadyRun(rate=rate, seconds=seconds, mode=mode, warmup_s=warmup_s, monitor=monitor)
    registry = Registry.from_settings(settings)
    deployment.deploy(settings, version, "bench: steady rate", registry=registry)
    if experiment is not None:
        deployment.start_experiment(settings, experiment[0], experiment[1], "bench", registry=registry)
    # One instance (and log) per run: waiting for "assigned" must not find an earlier run's line.
    instance = f"steady-{int(rate)}{tag}"
    replica = rig.serve(settings, instance)
    watched = {"replica": replica}
    if monitor:
        config = rig.workdir / f"{instance}-monitor.toml"
        # The monitor's defaults (label window, count and time windows), as production runs it.
        config.write_text(f'[monitor]\ndata_dir = "{rig.workdir / (instance + "-monitor-data")}"\n')
        watched["monitor"] = rig.command(
            f"{instance}-monitor", ["monitor", "--config", str(config), *monitor_args], settings
        )
    stop_sim, pause = threading.Event(), threading.Event()
    sim = threading.Thread(
        target=simulate,
        args=(settings, SimulationPlan(rate=rate, duration_s=warmup_s + seconds + 60)),
        kwargs={"stop": stop_sim},
        name="storefront-steady",
        daemon=True,
    )
    probe = OffsetProbe(settings)
    lag = LagSampler(settings) if monitor else None
    predictions, shadow = settings.topic("predictions"), settings.topic("predictions.shadow")
    readings: dict[str, list[tuple[float, float]]] = {name: [] for name in watched}
    try:
        replica.wait_for_log("event=assigned", timeout)
        if monitor:
            watched["monitor"].wait_for_log(READY, timeout)
        pids = {name: proc.pid for name, proc in watched.items()}
        # Idle: the replica has its model and its partitions, the monitor its tables, and nothing to do.
        idle0, i0 = _cpu(pids), time.monotonic()
        pause.wait(idle_s)
        idle = _shares(pids, idle0, _cpu(pids), time.monotonic() - i0)
        result.idle_cpu_share, result.monitor_idle_cpu_share = idle["replica"], idle.get("monitor")
        sim.start()
        wait_for(lambda: _produced(probe, predictions) > 0, timeout, "the first prediction")
        _wait(pause, warmup_s, progress, progress_every_s, f"{rate:,.0f}/s, warming up")
        before, shadow_before = _produced(probe, predictions), _produced(probe, shadow)
        cpu0, t0 = _cpu(pids), time.monotonic()
        if lag is not None:
            lag.recording = True
        told = t0
        while (now := time.monotonic()) < t0 + seconds:
            for name, pid in pids.items():
                mb = resident_mb(pid)
                if mb is None:
                    raise RuntimeError(f"the {name} ({watched[name].name}) exited during the steady run")
                readings[name].append((now - t0, mb))
            if progress is not None and now - told >= progress_every_s:
                told = now
                progress(_progress_line(rate, now - t0, seconds, readings, lag))
            pause.wait(min(1.0, t0 + seconds - now))
        cpu1, t1 = _cpu(pids), time.monotonic()
        if lag is not None:
            lag.recording = False
        result.requests = _produced(probe, predictions) - before
        result.shadow_predictions = _produced(probe, shadow) - shadow_before
    finally:
        stop_sim.set()
        if sim.is_alive():
            sim.join(30)
        if lag is not None:
            lag.stop()
        probe.close()
        for proc in watched.values():
            proc.stop(30)
    wall = t1 - t0
    shares = _shares(pids, cpu0, cpu1, wall)
    result.cpu_share = shares["replica"]
    result.answered_per_s = ratio(result.requests, wall)
    result.cpu_us_per_request = ratio(_times(result.cpu_share, wall, 1e6), result.requests)
    figures: dict[str, Any] = memory_figures(readings["replica"])
    if monitor:
        result.monitor_cpu_share = shares["monitor"]
        result.monitor_cpu_us_per_request = ratio(_times(shares["monitor"], wall, 1e6), result.requests)
        # A monitor that falls behind works off fewer requests than the replica answers: its CPU per
        # request it committed (two messages each) is its cost, whatever the machine let it keep up with.
        worked = (lag.committed[-1] - lag.committed[0]) / 2 if lag and len(lag.committed) > 1 else 0
        result.monitor_requests_worked = int(worked)
        result.monitor_cpu_us_per_worked = ratio(_times(shares["monitor"], wall, 1e6), worked)
        figures.update(memory_figures(readings["monitor"], "monitor_"))
        figures.update(lag_figures([float(s) for s in lag.samples] if lag else [], rate))
    for key, value in figures.items():
        setattr(result, key, value)
    return result


def _times(share: float | None, wall: float, scale: float) -> float | None:
    return None if share is None else share * wall * scale


def _progress_line(
    rate: float,
    elapsed: float,
    seconds: float,
    readings: Mapping[str, list[tuple[float, float]]],
    lag: LagSampler | None,
) -> str:
    parts = [f"{rate:,.0f}/s, {elapsed / 60:.1f} of {seconds / 60:.1f} min"]
    parts += [f"{name} {found[-1][1]:,.0f} MB" for name, found in readings.items() if found]
    if lag is not None and lag.samples:
        parts.append(f"monitor lag {lag.samples[-1] / (2 * rate):.1f} s")
    return "; ".join(parts)


#: The canary share the serving cost is measured at (the share the experiments' guarantee is measured at).
COST_CANARY_TRAFFIC = 0.1


def run_experiment_costs(
    rig: Rig,
    incumbent: str,
    candidate: str,
    rate: float,
    seconds: float,
    step: Callable[[str], None],
    warmup_s: float = 5.0,
    idle_s: float = 5.0,
) -> list[SteadyRun]:
    """The same steady run with a canary of ``candidate`` running, then with a shadow of it (the replica
    alone: what is compared is its CPU per request)."""
    runs = []
    for traffic in (COST_CANARY_TRAFFIC, None):
        step("serving cost: shadow" if traffic is None else "serving cost: canary")
        experiment = (candidate, traffic)
        runs.append(run_steady(rig, incumbent, rate, seconds, warmup_s, idle_s, experiment=experiment))
    return runs


def cost_figures(runs: list[SteadyRun]) -> dict[str, float | None]:
    """CPU per request with a canary and with a shadow running, and each over the plain run's at the same
    rate (the first rate that has an experiment run)."""
    plain = {run.rate: run for run in runs if run.mode == "plain"}
    out: dict[str, float | None] = {}
    for kind in ("canary", "shadow"):
        run = next((r for r in runs if r.mode.startswith(kind) and r.rate in plain), None)
        reference = plain[run.rate].cpu_us_per_request if run else None
        out[f"{kind}_cpu_us_per_request"] = run.cpu_us_per_request if run else None
        out[f"{kind}_vs_plain_cpu"] = ratio(run.cpu_us_per_request, reference) if run else None
    return out
