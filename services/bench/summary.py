"""The flat figures of one benchmark run (the JSON's top level), with every target judged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.bench.cpu import machine
from services.bench.experiments import ExperimentsReport
from services.bench.latency import Latency
from services.bench.plans import TARGET_RATE, BenchPlan
from services.bench.stats import REQUIRED_KEYS, derived, judge_targets
from services.bench.steady import SteadyRun, cost_figures
from services.bench.throughput import Throughput
from services.bench.volume import curve_figures
from services.config import Settings

#: Details the summary carries at its top level (or not at all), not again under ``details``.
_SUMMARIZED_ELSEWHERE = (
    "topic_prefix",
    "cpu_pressure_pct",
    "rounds",
    "experiments",
    "monitor_curve",
    "service_curve",
    "failed_steps",
)


def _rate(details: dict[str, Any], key: str) -> float | None:
    run: Throughput | None = details.get(key)
    return None if run is None else run.per_s


def summarize(plan: BenchPlan, details: dict[str, Any], base: Settings) -> dict[str, Any]:
    """The flat figures (the JSON's top level), with the targets judged, and every detail under
    ``details``."""
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "mode": plan.mode,
        "command": "modelwatch bench" + ("" if plan.mode == "default" else f" --{plan.mode}"),
        "machine": {**machine(), "cpu_pressure_pct": details.get("cpu_pressure_pct")},
        "topic_prefix": details.get("topic_prefix"),
        "service_runs_as": "modelwatch serve, one replica in a subprocess (batch_size "
        f"{base.serve.batch_size}, poll_timeout_s {base.serve.poll_timeout_s})",
        "requests": plan.requests,
        "passthrough_per_s": _rate(details, "passthrough"),
        "service_per_s": _rate(details, "service"),
        "naive_per_s": _rate(details, "naive"),
        "naive_count": details["naive"].outputs if "naive" in details else None,
        "exactly_once_per_s": _rate(details, "exactly_once"),
    }
    for key in ("passthrough", "service", "naive", "exactly_once"):
        run = details.get(key)
        summary[f"{key}_cpu_s_per_1000"] = None if run is None else run.cpu_per_1000
        summary[f"{key}_answered"] = None if run is None else run.unique
    latencies: list[Latency] = details.get("latency", [])
    at_target = next((lat for lat in latencies if lat.rate == TARGET_RATE), None)
    summary["p50_ms"] = at_target.p50_ms if at_target else None
    summary["p99_ms"] = at_target.p99_ms if at_target else None
    summary["max_ms"] = at_target.max_ms if at_target else None
    summary["latency"] = [lat.as_dict() for lat in latencies]
    monitor, raw = details.get("monitor"), details.get("monitor_raw")
    summary["monitor_labelled"] = plan.monitor_labelled
    summary["monitor_per_s"] = monitor.per_s if monitor else None
    summary["monitor_raw_per_s"] = raw.per_s if raw else None
    summary["monitor_cpu_s_per_1000"] = monitor.cpu_per_1000 if monitor else None
    summary["monitor_raw_cpu_s_per_1000"] = raw.cpu_per_1000 if raw else None
    summary["failed_steps"] = details.get("failed_steps", {})
    live = details.get("live")
    summary["ack_ms"] = live.ack_ms if live else None
    if live is not None:
        summary.update(
            {
                "monitor_lag_p50_messages": live.lag_p50_messages,
                "monitor_lag_max_messages": live.lag_max_messages,
                "monitor_lag_p50_s": live.lag_p50_s,
                "monitor_lag_max_s": live.lag_max_s,
                "alert_after_labelled": live.alert_after_labelled,
                "deploy_to_alert_s": live.deploy_to_alert_s,
                "alert_to_command_ms": live.alert_to_command_ms,
            }
        )
    steady: list[SteadyRun] = details.get("steady", [])
    summary.update(steady_figures(steady))
    summary["steady"] = [run.as_dict() for run in steady]
    summary.update(cost_figures(steady))
    monitor_points, service_points = details.get("monitor_curve", []), details.get("service_curve", [])
    summary.update(curve_figures(monitor_points, service_points))
    summary["monitor_curve"] = [point.as_dict() for point in monitor_points]
    summary["service_curve"] = [point.as_dict() for point in service_points]
    summary.update(derived(summary))
    summary["batch_sizes"] = [p.as_dict() for p in details.get("batch_sizes", [])]
    summary["rounds"] = plan.rounds
    summary["throughput_rounds"] = details.get("rounds", {})
    summary["codec_us"] = details.get("codec", {})
    summary["scoring_us"] = details.get("scoring", {})
    experiments: ExperimentsReport | None = details.get("experiments")
    summary["experiments"] = experiments.as_json() if experiments else None
    for key in REQUIRED_KEYS:
        summary.setdefault(key, None)
    summary["targets"] = judge_targets(summary)
    summary["details"] = {
        k: (v.as_dict() if hasattr(v, "as_dict") else [x.as_dict() for x in v] if isinstance(v, list) else v)
        for k, v in details.items()
        if k not in _SUMMARIZED_ELSEWHERE
    }
    return summary


def steady_figures(steady: list[SteadyRun]) -> dict[str, Any]:
    """The plain steady runs' figures by rate (``..._<rate>``): the replica's and the monitor's share of a
    core and memory slope, and the monitor's largest lag in seconds."""
    out: dict[str, Any] = {}
    for run in steady:
        if run.mode != "plain":
            continue
        r = int(run.rate)
        out[f"replica_cpu_share_{r}"] = run.cpu_share
        out[f"replica_rss_slope_mb_per_min_{r}"] = run.rss_slope_mb_per_min
        if run.monitor:
            out[f"monitor_cpu_share_{r}"] = run.monitor_cpu_share
            out[f"monitor_rss_slope_mb_per_min_{r}"] = run.monitor_rss_slope_mb_per_min
            out[f"monitor_lag_max_s_{r}"] = run.lag_max_s
    return out
