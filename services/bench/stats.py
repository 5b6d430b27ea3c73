"""The benchmark's arithmetic, kept pure so it can be unit-tested: percentiles, rates, ratios, CPU between two
instants from a sampled counter, and the targets each figure is judged against.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default
    method); ``None`` for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of latencies in milliseconds (``None`` where there are none)."""
    return {
        "p50_ms": percentile(values_ms, 50),
        "p99_ms": percentile(values_ms, 99),
        "max_ms": max(values_ms) if values_ms else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def span_rate(points: Sequence[tuple[float, float]]) -> float | None:
    """Items per second between the first and the last of ``(time_s, items_so_far)`` points.

    Rates taken between two observations of a running counter leave start-up (imports, group joins,
    recovery) out of every contender alike."""
    if len(points) < 2:
        return None
    (t0, n0), (t1, n1) = points[0], points[-1]
    return ratio(n1 - n0, t1 - t0)


def rate_of_timestamps(timestamps_ms: Sequence[int]) -> tuple[float | None, float]:
    """(items per second, seconds) over messages stamped ``timestamps_ms``: the messages after the first,
    over the time from the first to the last."""
    if len(timestamps_ms) < 2:
        return None, 0.0
    seconds = (max(timestamps_ms) - min(timestamps_ms)) / 1000.0
    return ratio(len(timestamps_ms) - 1, seconds), seconds


def interpolate(samples: Sequence[tuple[float, float]], at: float) -> float | None:
    """The value of a sampled, non-decreasing counter (``(time, value)`` pairs, time-ordered) at ``at``,
    linearly interpolated; clamped to the first or last sample outside their range."""
    if not samples:
        return None
    times = [t for t, _ in samples]
    i = bisect.bisect_left(times, at)
    if i == 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    if t1 == t0:
        return v1
    return v0 + (v1 - v0) * (at - t0) / (t1 - t0)


def cpu_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU-seconds a process spent between ``start`` and ``end`` (wall-clock seconds), from samples of its
    cumulative CPU time."""
    a, b = interpolate(samples, start), interpolate(samples, end)
    if a is None or b is None or end <= start:
        return None
    return max(0.0, b - a)


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The slope of the least-squares line through ``(x, y)`` points (y per unit of x); ``None`` for fewer
    than two distinct x. A memory reading's slope, unlike its last minus its first, is not one sample's
    noise."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def per_thousand(cpu_s: float | None, count: int) -> float | None:
    """CPU-seconds per 1,000 items."""
    return None if cpu_s is None or count <= 0 else cpu_s * 1000.0 / count


@dataclass(frozen=True)
class Target:
    """A figure the benchmark is judged by: ``key`` in the summary, compared with ``threshold``."""

    key: str
    op: Literal[">=", "<="]
    threshold: float
    label: str

    def judge(self, value: float | None) -> bool | None:
        """Met, missed, or ``None`` when the figure could not be measured."""
        if value is None:
            return None
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def describe(self) -> str:
        return f"{self.op} {self.threshold:g}"

    def by(self, value: float | None) -> str | None:
        """How far a missed target is missed, as the figure over the threshold (``None`` if met or not
        measured): "2.9x the limit" for a ceiling, "0.76 of the target" for a floor."""
        if self.judge(value) is not False or value is None or self.threshold == 0:
            return None
        times = value / self.threshold
        return f"{times:.2g}x the limit" if self.op == "<=" else f"{times:.2g} of the target"


#: The issue's targets. An exactly-once cost of at most 30% means a throughput ratio of at least 0.7.
TARGETS: tuple[Target, ...] = (
    Target("service_vs_naive", ">=", 20.0, "service vs naive service"),
    Target("service_vs_passthrough", ">=", 0.5, "service vs pass-through ceiling"),
    Target("p99_ms", "<=", 50.0, "p99 latency at 1,000 requests/s (ms)"),
    Target("exactly_once_ratio", ">=", 0.7, "exactly-once / at-least-once throughput"),
    Target("monitor_per_s", ">=", 10_000.0, "monitor labelled requests/s"),
    Target("monitor_vs_raw", ">=", 0.3, "monitor vs plain consumer"),
    Target("ack_ms", "<=", 1000.0, "slowest replica acknowledgement (ms)"),
    # Issue 14's, by CPU per item (which a contended machine moves far less than a rate).
    Target("service_cpu_us_per_prediction", "<=", 10.0, "service CPU per prediction (µs)"),
    Target("service_vs_naive_cpu", ">=", 20.0, "service vs naive service, by CPU per item"),
    Target("service_vs_passthrough_cpu", ">=", 0.25, "service vs pass-through, by CPU per item"),
    Target("replica_cpu_share_300", "<=", 0.05, "one replica's share of a core at 300 requests/s"),
    Target("monitor_cpu_share_300", "<=", 0.15, "the monitor's share of a core at 300 requests/s"),
    Target("monitor_lag_max_s_1000", "<=", 2.0, "the monitor's largest lag at 1,000 requests/s (s)"),
    Target("monitor_cpu_us_at_100000", "<=", 40.0, "monitor CPU per labelled request at 100,000 (µs)"),
    Target("monitor_cpu_us_at_1000000", "<=", 40.0, "monitor CPU per labelled request at 1,000,000 (µs)"),
    Target("monitor_cost_1m_vs_20k", "<=", 1.25, "monitor CPU per labelled request, 1,000,000 over 20,000"),
    Target("monitor_vs_raw_cpu", ">=", 0.5, "monitor vs plain loop, by CPU per item"),
    Target("monitor_rss_1m_vs_100k", "<=", 1.2, "monitor resident memory, 1,000,000 over 100,000 labelled"),
    # Measured by `modelwatch bench --soak` only (30 minutes at 300/s, after 5 minutes' warm-up).
    Target("soak_monitor_rss_drift", "<=", 0.1, "the monitor's resident memory over a soak, off its first"),
)

#: Keys every JSON result carries, measured or ``None``.
REQUIRED_KEYS = (
    "service_per_s",
    "passthrough_per_s",
    "naive_per_s",
    "service_vs_passthrough",
    "service_vs_naive",
    "p99_ms",
    "exactly_once_ratio",
    "monitor_per_s",
    "monitor_vs_raw",
    "ack_ms",
    "service_cpu_us_per_prediction",
    "replica_cpu_share_300",
    "replica_rss_slope_mb_per_min_300",
    "monitor_cpu_share_300",
    "monitor_lag_max_s_1000",
)


def judge_targets(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (``None``: not measured)."""
    out = []
    for t in TARGETS:
        value = summary.get(t.key)
        out.append(
            {
                "key": t.key,
                "label": t.label,
                "target": t.describe(),
                "value": value,
                "met": t.judge(value),
                "by": t.by(value),
            }
        )
    return out


def derived(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The ratios the targets judge, computed from the measured rates in ``summary``, and the service's
    CPU per prediction in µs."""
    service_cpu = summary.get("service_cpu_s_per_1000")
    return {
        "service_cpu_us_per_prediction": None if service_cpu is None else service_cpu * 1000.0,
        "service_vs_passthrough": ratio(summary.get("service_per_s"), summary.get("passthrough_per_s")),
        "service_vs_naive": ratio(summary.get("service_per_s"), summary.get("naive_per_s")),
        "exactly_once_ratio": ratio(summary.get("exactly_once_per_s"), summary.get("service_per_s")),
        "monitor_vs_raw": ratio(summary.get("monitor_per_s"), summary.get("monitor_raw_per_s")),
        # The same comparisons by CPU per item (how many times cheaper): on a contended machine, where the
        # rates swing with what else runs, CPU time per item moves much less.
        "service_vs_passthrough_cpu": ratio(
            summary.get("passthrough_cpu_s_per_1000"), summary.get("service_cpu_s_per_1000")
        ),
        "service_vs_naive_cpu": ratio(
            summary.get("naive_cpu_s_per_1000"), summary.get("service_cpu_s_per_1000")
        ),
        "exactly_once_ratio_cpu": ratio(
            summary.get("service_cpu_s_per_1000"), summary.get("exactly_once_cpu_s_per_1000")
        ),
        "monitor_vs_raw_cpu": ratio(
            summary.get("monitor_raw_cpu_s_per_1000"), summary.get("monitor_cpu_s_per_1000")
        ),
    }
