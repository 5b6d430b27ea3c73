"""The benchmark's figures as one PNG: four panels, each measure beside its reference and its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

MET, MISSED, REFERENCE = "#2e7d32", "#c62828", "#90a4ae"


def _bars(
    ax: Axes,
    labels: list[str],
    values: list[float | None],
    colors: list[str],
    unit: str,
    target: float | None = None,
    log: bool = False,
) -> None:
    shown = [v or 0.0 for v in values]
    bars = ax.barh(labels, shown, color=colors)
    top = max([*shown, target or 0.0]) or 1.0
    if log and any(v > 0 for v in shown):
        ax.set_xscale("log")
        ax.set_xlim(min(v for v in shown if v > 0) / 3, top * 8)
    else:
        ax.set_xlim(0, top * 1.3)
    for bar, value in zip(bars, values, strict=True):
        text = "not measured" if value is None else f"  {value:,.0f}{unit}"
        x = bar.get_width() if value else (ax.get_xlim()[0])
        ax.text(x, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=9)
    ax.invert_yaxis()


def _target_line(ax: Axes, x: float, label: str, vertical: bool = True) -> None:
    if vertical:
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[0], f" {label}", va="bottom", ha="left", fontsize=8)
    else:
        ax.axhline(x, color="black", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], x, f" {label}", va="bottom", ha="left", fontsize=8)


def _color(met: bool | None) -> str:
    return REFERENCE if met is None else MET if met else MISSED


def _met(summary: dict[str, Any], key: str) -> bool | None:
    return next((t["met"] for t in summary.get("targets", []) if t["key"] == key), None)


def draw(summary: dict[str, Any], path: Path) -> Path:
    fig, axes = plt.subplots(3, 2, figsize=(15, 14))
    machine = summary.get("machine", {})
    pressure = machine.get("cpu_pressure_pct")
    contended = "" if pressure is None else f", tasks waited for a CPU {pressure:.0f}% of the run"
    fig.suptitle(
        f"modelwatch bench --{summary.get('mode')}, {summary.get('date')}: "
        f"{machine.get('nproc')} cores, {machine.get('memory_gib')} GiB{contended}\n"
        "green: target met, red: missed, grey: reference",
        fontsize=12,
    )

    ax = axes[0][0]
    s = summary
    service_met = _met(s, "service_vs_passthrough") and _met(s, "service_vs_naive")
    _bars(
        ax,
        [
            "pass-through\n(ceiling)",
            "modelwatch serve",
            "serve\n--exactly-once",
            f"naive\n({s.get('naive_count')} req.)",
        ],
        [
            s.get("passthrough_per_s"),
            s.get("service_per_s"),
            s.get("exactly_once_per_s"),
            s.get("naive_per_s"),
        ],
        [REFERENCE, _color(service_met), _color(_met(s, "exactly_once_ratio")), REFERENCE],
        "/s",
        log=True,
    )
    ratio = s.get("service_vs_passthrough")
    naive = s.get("service_vs_naive")
    ax.set_title(
        "predictions per second, one replica, same requests\n"
        f"serve = {ratio or 0:.2f}x ceiling (target 0.5x), {naive or 0:.1f}x naive (target 20x)",
        fontsize=10,
    )
    ax.set_xlabel("predictions/s (log scale)")

    ax = axes[0][1]
    latencies = s.get("latency", [])
    if latencies:
        width = 0.25
        xs = range(len(latencies))
        for j, (key, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max"))):
            values = [lat[key] or 0.0 for lat in latencies]
            bars = ax.bar([x + (j - 1) * width for x in xs], values, width, label=label)
            for bar, v in zip(bars, values, strict=True):
                ax.text(bar.get_x() + width / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [f"{lat['rate']:,.0f} req/s offered" for lat in latencies])
        ax.set_yscale("log")
        ax.set_ylim(1, max(max(lat["max_ms"] or 1.0 for lat in latencies) * 3, 100))
        ax.legend(loc="upper left", fontsize=8)
        _target_line(ax, 50.0, "p99 target at 1,000/s: 50 ms", vertical=False)
    ax.set_ylabel("ms, request produced to prediction consumed (log)")
    ax.set_title("end-to-end latency at fixed offered rates", fontsize=10)

    ax = axes[1][0]
    _bars(
        ax,
        ["Faust monitor", "plain consumer,\nsame join and windows"],
        [s.get("monitor_per_s"), s.get("monitor_raw_per_s")],
        [_color(_met(s, "monitor_per_s")), REFERENCE],
        "/s",
        target=10_000.0,
    )
    _target_line(ax, 10_000.0, "target 10,000/s")
    ax.set_title(
        f"monitor: labelled requests per second ({s.get('monitor_labelled') or 0:,} labelled)\n"
        f"Faust = {s.get('monitor_vs_raw') or 0:.2f}x plain (target 0.3x)",
        fontsize=10,
    )
    ax.set_xlabel("labelled requests/s")

    ax = axes[1][1]
    live = s.get("details", {}).get("live")
    if live:
        labels, values = [], []
        for what, acks in (("deploy", live["deploy_ack_ms"]), ("rollback", live["rollback_ack_ms"])):
            for instance, ms in sorted(acks.items()):
                labels.append(f"{what} → {instance}")
                values.append(float(ms))
        _bars(ax, labels, values, [_color(_met(s, "ack_ms"))] * len(values), " ms", target=1000.0)
        _target_line(ax, 1000.0, "target 1 s")
        ax.set_title(
            "control loop: command → replica acknowledgement\n"
            f"the alert fired after {live['alert_after_labelled']} labelled requests of the bad version "
            f"({live['deploy_to_alert_s'] or 0:.1f} s)\nmonitor lag p50 {live['lag_p50_messages'] or 0:,.0f} "
            f"messages at {live['rate']:.0f} req/s",
            fontsize=10,
        )
        ax.set_xlabel("ms")
    else:
        ax.set_axis_off()
        ax.set_title("control loop: not measured in this run", fontsize=10)

    ax = axes[2][0]
    sweep = s.get("batch_sizes", [])
    if sweep:
        sizes = [str(p["batch_size"]) for p in sweep]
        rates = [p["per_s"] or 0.0 for p in sweep]
        ax.bar(sizes, rates, color=REFERENCE)
        for x, v in zip(sizes, rates, strict=True):
            ax.text(x, v, f"{v:,.0f}/s", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("predictions/s (bars)")
        twin = ax.twinx()
        twin.plot(sizes, [p["p99_ms"] or 0.0 for p in sweep], color="#6a1b9a", marker="o")
        twin.set_ylabel(f"p99 ms at {sweep[0]['rate']:,.0f} req/s (line)", color="#6a1b9a")
        twin.set_ylim(0, max(60.0, max(p["p99_ms"] or 0.0 for p in sweep) * 1.3))
        ax.set_xlabel("serve.batch_size")
        ax.set_title("choosing serve.batch_size: throughput and p99 per setting", fontsize=10)
    else:
        ax.set_axis_off()
        ax.set_title("batch-size sweep: measured by --full only", fontsize=10)

    ax = axes[2][1]
    costs: dict[str, float] = {}
    for key, value in s.get("codec_us", {}).items():
        if key == "request_fast_intake_us":
            costs["service's fast intake (request)"] = value
        else:
            costs[f"decode+validate {key.removesuffix('_decode_us').replace('_', ' ')}"] = value
    for key, value in s.get("scoring_us", {}).items():
        costs[f"scoring, batch of {key.removeprefix('score_batch').removesuffix('_us')}"] = value
    if costs:
        _bars(ax, list(costs), list(costs.values()), [REFERENCE] * len(costs), " µs", log=True)
        ax.set_xlabel("µs per event or request (log scale)")
    ax.set_title("in-process costs: codec per event, scoring per request", fontsize=10)

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
