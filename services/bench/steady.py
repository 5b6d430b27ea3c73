"""A replica's cost at a steady offered rate: the share of a core it uses and how its memory moves.

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

With ``experiment``, the replica serves the same traffic with an experiment running beside the active
version: a canary (a share of users answered by the candidate) or a shadow (every request also scored by
the candidate, on the replica's shadow thread, into ``predictions.shadow``, counted too): the serving cost
of each, beside the plain run at the same rate in the same benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.bench.cpu import process_cpu_seconds
from services.bench.rig import OffsetProbe, Rig
from services.bench.stats import least_squares_slope, ratio
from services.config import Settings
from services.deployment import orders as deployment
from services.registry import Registry
from services.sandbox.processes import wait_for
from services.sandbox.storefront import SimulationPlan, simulate


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
    shadow_predictions: int = 0  # written to predictions.shadow in the window
    #: "plain", "canary <traffic>" or "shadow".
    mode: str = "plain"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(pid: int, seconds: float, stop: threading.Event) -> tuple[float | None, float]:
    """(CPU-seconds of ``pid`` over the next ``seconds``, the wall seconds they took)."""
    cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
    stop.wait(seconds)
    cpu1, t1 = process_cpu_seconds(pid), time.monotonic()
    if cpu0 is None or cpu1 is None:
        return None, t1 - t0
    return cpu1 - cpu0, t1 - t0


def _produced(probe: OffsetProbe, topic: str) -> int:
    return sum(probe.ends(topic).values())


def run_steady(
    rig: Rig,
    version: str,
    rate: float,
    seconds: float,
    warmup_s: float = 5.0,
    idle_s: float = 5.0,
    timeout: float = 90.0,
    experiment: tuple[str, float | None] | None = None,
) -> SteadyRun:
    """One replica at a steady ``rate`` for ``seconds`` (after ``warmup_s``), with ``experiment`` (a
    candidate version and a canary's traffic, or None for a shadow) running; see the module's docstring."""
    mode = "plain"
    if experiment is not None:
        mode = "shadow" if experiment[1] is None else f"canary {experiment[1]:g}"
    tag = "" if experiment is None else "-" + mode.split()[0]
    settings: Settings = rig.settings(f"steady{int(rate)}{tag}")
    rig.create(settings)
    result = SteadyRun(rate=rate, seconds=seconds, mode=mode)
    registry = Registry.from_settings(settings)
    deployment.deploy(settings, version, "bench: steady rate", registry=registry)
    if experiment is not None:
        deployment.start_experiment(settings, experiment[0], experiment[1], "bench", registry=registry)
    # One instance (and log) per run: waiting for "assigned" must not find an earlier run's line.
    instance = f"steady-{int(rate)}{tag}"
    replica = rig.serve(settings, instance)
    stop_sim, pause = threading.Event(), threading.Event()
    sim = threading.Thread(
        target=simulate,
        args=(settings, SimulationPlan(rate=rate, duration_s=warmup_s + seconds + 60)),
        kwargs={"stop": stop_sim},
        name="storefront-steady",
        daemon=True,
    )
    probe = OffsetProbe(settings)
    predictions, shadow = settings.topic("predictions"), settings.topic("predictions.shadow")
    try:
        replica.wait_for_log("event=assigned", timeout)
        pid = replica.pid
        # Idle: the replica has its model and its partitions, and nothing to do.
        idle_cpu, idle_wall = _share(pid, idle_s, pause)
        result.idle_cpu_share = ratio(idle_cpu, idle_wall)
        sim.start()
        wait_for(lambda: _produced(probe, predictions) > 0, timeout, "the first prediction")
        pause.wait(warmup_s)
        before, shadow_before = _produced(probe, predictions), _produced(probe, shadow)
        cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
        rss: list[tuple[float, float]] = []
        while (now := time.monotonic()) < t0 + seconds:
            mb = resident_mb(pid)
            if mb is None:
                raise RuntimeError(f"replica {instance} exited during the steady run")
            rss.append((now - t0, mb))
            pause.wait(min(1.0, t0 + seconds - now))
        cpu1, t1 = process_cpu_seconds(pid), time.monotonic()
        result.requests = _produced(probe, predictions) - before
        result.shadow_predictions = _produced(probe, shadow) - shadow_before
    finally:
        stop_sim.set()
        if sim.is_alive():
            sim.join(30)
        probe.close()
        replica.stop(30)
    wall = t1 - t0
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    result.cpu_share = ratio(cpu, wall)
    result.answered_per_s = ratio(result.requests, wall)
    result.cpu_us_per_request = None if cpu is None else ratio(cpu * 1e6, result.requests)
    if rss:
        result.rss_first_mb, result.rss_last_mb = rss[0][1], rss[-1][1]
        slope = least_squares_slope(rss)
        result.rss_slope_mb_per_min = None if slope is None else slope * 60.0
    return result


#: The canary share the serving cost is measured at (the share the experiments' guarantee is measured at).
COST_CANARY_TRAFFIC = 0.1


def run_experiment_costs(
    rig: Rig, incumbent: str, candidate: str, rate: float, seconds: float, step: Callable[[str], None]
) -> list[SteadyRun]:
    """The same steady run with a canary of ``candidate`` running, then with a shadow of it."""
    runs = []
    for traffic in (COST_CANARY_TRAFFIC, None):
        step("serving cost: shadow" if traffic is None else "serving cost: canary")
        runs.append(run_steady(rig, incumbent, rate, seconds, experiment=(candidate, traffic)))
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
