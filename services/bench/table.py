"""The benchmark's figures as one rich table: each measure beside its reference, and the targets."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from services.bench.stats import TARGETS, Target


def _n(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _cpu(value: float | None, then: str = "") -> str:
    """CPU-seconds per 1,000, then ``then``."""
    parts = ([] if value is None else [f"{value:.3f} CPU-s/1k"]) + ([then] if then else [])
    return "; ".join(parts)


def _by_cpu(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "" if value is None else f"(by CPU per item: {value:.2f})"


def _verdict(summary: dict[str, Any], key: str) -> tuple[str, str]:
    target = next((t for t in TARGETS if t.key == key), None)
    if target is None:
        return "", ""
    return target.describe(), verdict(target, summary.get(key))


def verdict(target: Target, value: float | None) -> str:
    """Met, missed by how much, or "-" (not measured)."""
    met = target.judge(value)
    return "-" if met is None else "[green]met[/green]" if met else f"[red]missed[/red] ({target.by(value)})"


def bench_table(summary: dict[str, Any]) -> Table:
    machine = summary.get("machine", {})
    pressure = machine.get("cpu_pressure_pct")
    contended = "" if pressure is None else f"; tasks waited for a CPU {pressure:.0f}% of the run"
    table = Table(
        title=f"modelwatch bench --{summary.get('mode')}  {summary.get('date')}  "
        f"({machine.get('nproc')} cores, {machine.get('memory_gib')} GiB{contended})",
        title_justify="left",
    )
    for column in ("measure", "value", "beside", "ratio", "target", ""):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")

    def row(
        measure: str, value: str, beside: str = "", ratio_key: str | None = None, digits: int = 2
    ) -> None:
        ratio = _n(summary.get(ratio_key), digits) if ratio_key else ""
        target, mark = _verdict(summary, ratio_key) if ratio_key else ("", "")
        table.add_row(measure, value, beside, ratio, target, mark)

    s = summary
    row(
        "pass-through (ceiling)",
        _n(s.get("passthrough_per_s"), unit="/s"),
        _cpu(s.get("passthrough_cpu_s_per_1000")),
    )
    row(
        "modelwatch serve",
        _n(s.get("service_per_s"), unit="/s"),
        _cpu(s.get("service_cpu_s_per_1000"), f"vs pass-through {_by_cpu(s, 'service_vs_passthrough_cpu')}"),
        "service_vs_passthrough",
    )
    row(
        f"naive service ({_n(s.get('naive_count'))} requests)",
        _n(s.get("naive_per_s"), unit="/s"),
        _cpu(s.get("naive_cpu_s_per_1000"), f"service vs naive {_by_cpu(s, 'service_vs_naive_cpu')}"),
        "service_vs_naive",
        digits=1,
    )
    row("service CPU per prediction", _n(s.get("service_cpu_us_per_prediction"), 1, " µs"), "", None)
    for by_cpu, label in (("service_vs_naive_cpu", "naive"), ("service_vs_passthrough_cpu", "pass-through")):
        target, mark = _verdict(s, by_cpu)
        table.add_row(f"service vs {label}, by CPU per item", "", "", _n(s.get(by_cpu), 2), target, mark)
    for run in s.get("steady", []):
        mode = run.get("mode", "plain")
        plain = mode == "plain"
        target, mark = _verdict(s, "replica_cpu_share_300") if run["rate"] == 300 and plain else ("", "")
        share, idle = run.get("cpu_share"), run.get("idle_cpu_share")
        vs = "" if plain else f" ({_n(s.get(f'{mode.split()[0]}_vs_plain_cpu'), 2)}x plain)"
        shadowed = f"; {run.get('shadow_predictions', 0):,} shadow predictions" if mode == "shadow" else ""
        table.add_row(
            f"one replica at a steady {run['rate']:,.0f}/s" + ("" if plain else f", {mode} running"),
            "-" if share is None else f"{share * 100:.1f}% of a core",
            f"{_n(run.get('cpu_us_per_request'))} µs CPU per request{vs}{shadowed}; "
            f"idle {'-' if idle is None else f'{idle * 100:.1f}%'}; "
            f"resident {_n(run.get('rss_last_mb'))} MB, {_n(run.get('rss_slope_mb_per_min'), 2)} MB/min; "
            f"{_n(run.get('answered_per_s'))}/s answered",
            "",
            target,
            mark,
        )
        if run.get("monitor"):
            _monitor_row(table, s, run)
    row(
        "serve --exactly-once",
        _n(s.get("exactly_once_per_s"), unit="/s"),
        _cpu(
            s.get("exactly_once_cpu_s_per_1000"), f"vs at-least-once {_by_cpu(s, 'exactly_once_ratio_cpu')}"
        ),
        "exactly_once_ratio",
    )
    for lat in s.get("latency", []):
        key = "p99_ms" if lat["rate"] == 1000 else None
        target, mark = _verdict(s, key) if key else ("", "")
        table.add_row(
            f"latency at {lat['rate']:,.0f}/s",
            f"p99 {_n(lat['p99_ms'], 1)} ms",
            f"p50 {_n(lat['p50_ms'], 1)} ms, max {_n(lat['max_ms'], 1)} ms; "
            f"{lat['answered']:,}/{lat['sent']:,} answered; in the replica p99 "
            f"{_n(lat.get('replica_p99_ms'), 1)} ms; CPU pressure {_n(lat.get('cpu_pressure_pct'))}%",
            "",
            target,
            mark,
        )
    target, mark = _verdict(s, "monitor_per_s")
    table.add_row(
        f"monitor, Faust ({_n(s.get('monitor_labelled'))} labelled)",
        _n(s.get("monitor_per_s"), unit="/s"),
        _cpu(s.get("monitor_cpu_s_per_1000")),
        "",
        target,
        mark,
    )
    row(
        "monitor, plain consumer",
        _n(s.get("monitor_raw_per_s"), unit="/s"),
        _cpu(s.get("monitor_raw_cpu_s_per_1000"), f"Faust vs plain {_by_cpu(s, 'monitor_vs_raw_cpu')}"),
        "monitor_vs_raw",
    )
    if s.get("monitor_lag_p50_messages") is not None:
        table.add_row(
            "monitor lag at the demo's rate",
            f"p50 {_n(s.get('monitor_lag_p50_messages'))} msgs",
            f"max {_n(s.get('monitor_lag_max_messages'))} msgs (≈{_n(s.get('monitor_lag_max_s'), 1)} s)",
        )
        table.add_row(
            "bad version: labelled until alert",
            _n(s.get("alert_after_labelled")),
            f"{_n(s.get('deploy_to_alert_s'), 1)} s after its deploy",
        )
        gap = s.get("alert_to_command_ms")
        when = "-" if gap is None else f"{abs(gap)} ms {'before' if gap < 0 else 'after'}"
        table.add_row("rollback command vs alert", when, "the same emission publishes both")
    target, mark = _verdict(s, "ack_ms")
    table.add_row(
        "command → last replica's ack",
        _n(s.get("ack_ms"), unit=" ms"),
        "deploy and rollback",
        "",
        target,
        mark,
    )
    _curve_rows(table, s)
    for point in s.get("batch_sizes", []):
        table.add_row(
            f"serve --batch-size {point['batch_size']}",
            _n(point["per_s"], unit="/s"),
            f"{_cpu(point['cpu_per_1000'])}; p99 {_n(point['p99_ms'], 1)} ms at {point['rate']:,.0f}/s",
        )
    for name, value in s.get("codec_us", {}).items():
        table.add_row(
            f"codec: {name.removesuffix('_us').replace('_', ' ')}", _n(value, 1, " µs"), "per event"
        )
    for name, value in s.get("scoring_us", {}).items():
        size = name.removeprefix("score_batch").removesuffix("_us")
        table.add_row(f"scoring, batch of {size}", _n(value, 1, " µs"), "per request")
    target_rows(table, s)
    return table


def _monitor_row(table: Table, s: dict[str, Any], run: dict[str, Any]) -> None:
    rate = int(run["rate"])
    key = {300: "monitor_cpu_share_300", 1000: "monitor_lag_max_s_1000"}.get(rate)
    target, mark = _verdict(s, key) if key else ("", "")
    share, idle = run.get("monitor_cpu_share"), run.get("monitor_idle_cpu_share")
    table.add_row(
        f"  the monitor beside it at {rate:,}/s",
        "-" if share is None else f"{share * 100:.1f}% of a core",
        f"{_n(run.get('monitor_cpu_us_per_request'))} µs CPU per request answered, "
        f"{_n(run.get('monitor_cpu_us_per_worked'))} per request worked off "
        f"({_n(run.get('monitor_requests_worked'))}); "
        f"idle {'-' if idle is None else f'{idle * 100:.1f}%'}; "
        f"resident {_n(run.get('monitor_rss_last_mb'))} MB, {_n(run.get('monitor_rss_slope_mb_per_min'), 2)} "
        f"MB/min; lag p50 {_n(run.get('lag_p50_s'), 2)} s, max {_n(run.get('lag_max_s'), 2)} s, "
        f"last {_n(run.get('lag_last_s'), 2)} s",
        "",
        target,
        mark,
    )


def _curve_rows(table: Table, s: dict[str, Any]) -> None:
    """The volume curve: each point beside its reference taken in the same run."""
    for point in s.get("monitor_curve", []):
        faust, plain = point.get("faust") or {}, point["plain"]
        table.add_row(
            f"monitor at {point['labelled']:,} labelled",
            _n(faust.get("cpu_us_per_labelled"), 0, " µs"),
            f"CPU per labelled request; resident {_n(faust.get('rss_mb'))} MB; "
            f"plain loop {_n(plain.get('cpu_us_per_labelled'), 0, ' µs')}",
            _n(point.get("faust_vs_plain_cpu"), 2),
        )
    for point in s.get("service_curve", []):
        table.add_row(
            f"service at {point['requests']:,} requests",
            _n(point.get("service_cpu_us"), 1, " µs"),
            f"CPU per prediction; pass-through {_n(point.get('passthrough_cpu_us'), 1, ' µs')}",
            _n(point.get("service_vs_passthrough_cpu"), 2),
        )


def target_rows(table: Table, s: dict[str, Any]) -> None:
    """Every target of the issues, its figure, and met or missed by how much ("-": not measured in this
    mode; the volume curve is measured by --full, the soak by --soak)."""
    table.add_section()
    for t in TARGETS:
        value = s.get(t.key)
        table.add_row(
            f"target: {t.label}",
            _n(value, 3 if abs(value or 0) < 10 else 0),
            "",
            "",
            t.describe(),
            verdict(t, value),
        )
