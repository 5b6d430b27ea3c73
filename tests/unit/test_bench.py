"""The benchmark's pure parts: percentiles, rates, ratios, CPU windows, targets, the JSON's keys, and that
the table and the plot render whatever was (or was not) measured. Nothing here times anything."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from services.bench.cpu import cpu_pressure_us, process_cpu_seconds
from services.bench.latency import Latency
from services.bench.live import LiveRun, live_config
from services.bench.monitor import MonitorRun
from services.bench.plans import DEFAULT, FULL
from services.bench.plot import draw
from services.bench.runner import QUICK, BenchPlan, summarize
from services.bench.soak import SoakPlan, soak_summary, soak_table
from services.bench.stats import (
    REQUIRED_KEYS,
    TARGETS,
    cpu_between,
    derived,
    interpolate,
    judge_targets,
    latency_summary,
    least_squares_slope,
    per_thousand,
    percentile,
    rate_of_timestamps,
    ratio,
    span_rate,
)
from services.bench.steady import SteadyRun, cost_figures, lag_figures, memory_figures, resident_mb
from services.bench.table import bench_table
from services.bench.throughput import Throughput, best_of
from services.bench.volume import MonitorPoint, ServicePoint, curve_figures
from services.cli import app as cli_app
from services.config import load_settings

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # unsorted input
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    summary = latency_summary(values)
    assert summary == {"p50_ms": 50.5, "p99_ms": pytest.approx(99.01), "max_ms": 100.0}
    assert latency_summary([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}


def test_ratios_and_rates() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(None, 4.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    # 1,001 messages over 2 s: 1,000 intervals.
    assert rate_of_timestamps([1000 + 2 * i for i in range(1001)]) == (500.0, 2.0)
    assert rate_of_timestamps([5]) == (None, 0.0)
    assert rate_of_timestamps([5, 5]) == (None, 0.0)  # no time passed: no rate
    assert span_rate([(10.0, 100), (11.0, 600), (12.0, 1100)]) == 500.0
    assert span_rate([(10.0, 100)]) is None
    assert per_thousand(0.5, 2000) == 0.25
    assert per_thousand(None, 10) is None
    assert per_thousand(1.0, 0) is None


def test_cpu_between_interpolates_the_sampled_counter() -> None:
    samples = [(0.0, 0.0), (1.0, 0.5), (2.0, 1.5), (3.0, 1.5)]
    assert interpolate(samples, 1.5) == 1.0
    assert interpolate(samples, -1.0) == 0.0  # clamped before the first sample
    assert interpolate(samples, 9.0) == 1.5  # and after the last
    assert interpolate([], 1.0) is None
    assert cpu_between(samples, 0.5, 2.5) == pytest.approx(1.25)
    assert cpu_between(samples, 2.0, 1.0) is None


def test_targets_judge_each_way() -> None:
    by_key = {t.key: t for t in TARGETS}
    assert by_key["service_vs_naive"].judge(20.0) is True
    assert by_key["service_vs_naive"].judge(19.9) is False
    assert by_key["p99_ms"].judge(50.0) is True
    assert by_key["p99_ms"].judge(50.1) is False
    assert by_key["exactly_once_ratio"].judge(0.7) is True  # a 30% cost is allowed
    assert by_key["ack_ms"].judge(None) is None
    judged = judge_targets({"monitor_per_s": 12_000.0, "monitor_vs_raw": 0.2})
    verdicts = {t["key"]: t["met"] for t in judged}
    assert verdicts["monitor_per_s"] is True and verdicts["monitor_vs_raw"] is False
    assert verdicts["p99_ms"] is None


def test_derived_ratios() -> None:
    got = derived(
        {
            "service_per_s": 10_000.0,
            "passthrough_per_s": 40_000.0,
            "naive_per_s": 500.0,
            "exactly_once_per_s": 8_000.0,
            "monitor_per_s": 3_000.0,
            "monitor_raw_per_s": 12_000.0,
        }
    )
    assert {k: v for k, v in got.items() if not k.endswith("_cpu")} == {
        "service_cpu_us_per_prediction": None,
        "service_vs_passthrough": 0.25,
        "service_vs_naive": 20.0,
        "exactly_once_ratio": 0.8,
        "monitor_vs_raw": 0.25,
    }
    assert {k: v for k, v in got.items() if k.endswith("_cpu")} == dict.fromkeys(
        ("service_vs_passthrough_cpu", "service_vs_naive_cpu", "exactly_once_ratio_cpu", "monitor_vs_raw_cpu")
    )  # no CPU figures given: none derived
    by_cpu = derived(
        {
            "service_cpu_s_per_1000": 0.02,
            "naive_cpu_s_per_1000": 0.3,
            "passthrough_cpu_s_per_1000": 0.002,
            "exactly_once_cpu_s_per_1000": 0.025,
            "monitor_cpu_s_per_1000": 0.25,
            "monitor_raw_cpu_s_per_1000": 0.05,
        }
    )
    assert by_cpu["service_cpu_us_per_prediction"] == pytest.approx(20.0)
    assert by_cpu["service_vs_naive_cpu"] == pytest.approx(15.0)  # 15 times cheaper per request
    assert by_cpu["service_vs_passthrough_cpu"] == pytest.approx(0.1)
    assert by_cpu["exactly_once_ratio_cpu"] == pytest.approx(0.8)
    assert by_cpu["monitor_vs_raw_cpu"] == pytest.approx(0.2)


def _run(name: str, per_s: float, outputs: int = 1000) -> Throughput:
    return Throughput(name, outputs, outputs, outputs / per_s, per_s, 0.2, 0.2)


def _details() -> dict[str, Any]:
    live = LiveRun(rate=150.0, warmup_s=15.0, lag_samples=3, lag_p50_messages=200.0, lag_max_messages=300.0)
    live.deploy_ack_ms, live.rollback_ack_ms = {"a": 400, "b": 900}, {"a": 30, "b": 50}
    live.alert_after_labelled, live.deploy_to_alert_s, live.alert_to_command_ms = 250, 4.0, -5
    return {
        "codec": {"request_decode_us": 9.0},
        "scoring": {"score_batch500_us": 11.0},
        "passthrough": _run("pass-through", 100_000.0),
        "naive": _run("naive", 1_000.0, outputs=200),
        "service": _run("service", 25_000.0),
        "exactly_once": _run("service --exactly-once", 20_000.0),
        "latency": [Latency(1000.0, 999.0, 10.0, 10_000, 10_000, 10.0, 40.0, 90.0, 3.0, 2.0)],
        "monitor": MonitorRun("faust", 20_000, 10.0, 2_000.0, 5.0, 0.25),
        "monitor_raw": MonitorRun("plain", 20_000, 1.0, 20_000.0, 0.5, 0.025),
        "live": live,
        "steady": [
            SteadyRun(
                300.0,
                30.0,
                0.01,
                0.04,
                9000,
                300.0,
                133.0,
                180.0,
                180.5,
                0.01,
                monitor=True,
                **_monitor(0.2, 1.0),
            ),
            SteadyRun(
                1000.0,
                30.0,
                0.01,
                0.12,
                30000,
                1000.0,
                120.0,
                181.0,
                181.0,
                0.0,
                monitor=True,
                **_monitor(0.5, 1.5),
            ),
        ],
        # The monitor's volume curve: 50 µs a labelled request at 20,000, 60 at 100,000 and at a million.
        "monitor_curve": [
            MonitorPoint(
                n,
                MonitorRun("faust", n, 10.0, 2_000.0, 1.0, cpu, rss),
                MonitorRun("plain", n, 1.0, 1.0, 1.0, 0.025),
            )
            for n, cpu, rss in ((20_000, 0.05, 300.0), (100_000, 0.06, 350.0), (1_000_000, 0.06, 400.0))
        ],
    }


def _monitor(share: float, lag_max_s: float) -> dict[str, Any]:
    return {"monitor_cpu_share": share, "monitor_rss_slope_mb_per_min": 0.5, "lag_max_s": lag_max_s}


def test_summary_carries_every_key_and_the_ratios() -> None:
    summary = summarize(QUICK, _details(), load_settings())
    for key in (*REQUIRED_KEYS, "date", "machine", "targets", "details", "exactly_once_per_s"):
        assert key in summary
    assert summary["machine"]["nproc"] == os.cpu_count()
    assert summary["service_vs_passthrough"] == 0.25
    assert summary["service_vs_naive"] == 25.0
    assert summary["exactly_once_ratio"] == 0.8
    assert summary["monitor_vs_raw"] == 0.1
    assert summary["p99_ms"] == 40.0
    assert summary["ack_ms"] == 900
    assert summary["naive_count"] == 200
    met = {t["key"]: t["met"] for t in summary["targets"]}
    assert met == {
        "service_vs_naive": True,
        "service_vs_passthrough": False,
        "p99_ms": True,
        "exactly_once_ratio": True,
        "monitor_per_s": False,
        "monitor_vs_raw": False,
        "ack_ms": True,
        "service_cpu_us_per_prediction": False,  # _run's 0.2 CPU-s per 1,000: 200 µs a prediction
        "service_vs_naive_cpu": False,  # every _run costs the same per item
        "service_vs_passthrough_cpu": True,
        "replica_cpu_share_300": True,
        "monitor_cpu_share_300": False,  # 20% of a core
        "monitor_lag_max_s_1000": True,  # 1.5 s
        "monitor_cpu_us_at_100000": False,  # 60 µs
        "monitor_cpu_us_at_1000000": False,
        "monitor_cost_1m_vs_20k": True,  # 1.2x
        "monitor_vs_raw_cpu": False,  # the plan's own monitor run: 250 µs, the plain loop 25
        "monitor_rss_1m_vs_100k": True,  # 400 / 350 MB
        "soak_monitor_rss_drift": None,  # only --soak measures it
    }
    assert summary["replica_rss_slope_mb_per_min_300"] == 0.01
    assert summary["monitor_cpu_share_1000"] == 0.5 and summary["monitor_rss_slope_mb_per_min_300"] == 0.5
    assert summary["monitor_cpu_us_at_20000"] == pytest.approx(50.0)
    assert summary["monitor_cost_1m_vs_20k"] == pytest.approx(1.2)
    assert summary["monitor_rss_1m_vs_100k"] == pytest.approx(400 / 350)
    # How far a missed target is missed, beside the verdict.
    by = {t["key"]: t["by"] for t in summary["targets"]}
    assert (
        by["monitor_cpu_share_300"] == "1.3x the limit" and by["monitor_cpu_us_at_100000"] == "1.5x the limit"
    )
    assert by["service_vs_naive_cpu"] == "0.05 of the target" and by["p99_ms"] is None
    assert summary["service_cpu_us_per_prediction"] == pytest.approx(200.0)
    decoded = orjson.loads(orjson.dumps(summary))  # JSON all the way down
    assert decoded["details"]["live"]["ack_ms"] == 900


def test_summary_of_a_partial_run_says_what_was_not_measured() -> None:
    plan = BenchPlan("tiny", 100, 10, (200.0,), 1.0, 100, 0.01, faust=False, live=False)
    details = {
        k: v for k, v in _details().items() if k not in ("monitor", "live", "latency", "monitor_curve")
    }
    summary = summarize(plan, details, load_settings())
    assert summary["monitor_per_s"] is None and summary["monitor_vs_raw"] is None
    assert summary["p99_ms"] is None and summary["ack_ms"] is None
    assert {t["key"] for t in summary["targets"] if t["met"] is None} == {
        "p99_ms",
        "monitor_per_s",
        "monitor_vs_raw",
        "monitor_vs_raw_cpu",
        "ack_ms",
        "monitor_cpu_us_at_100000",
        "monitor_cpu_us_at_1000000",
        "monitor_cost_1m_vs_20k",
        "monitor_rss_1m_vs_100k",
        "soak_monitor_rss_drift",
    }
    assert "monitor (Faust)" not in plan.steps() and "live: lag and control loop" not in plan.steps()


def test_table_and_plot_render_full_and_partial_results(tmp_path: Path) -> None:
    full = summarize(QUICK, _details(), load_settings())
    partial = summarize(QUICK, {"codec": {}, "scoring": {}}, load_settings())
    texts = {}
    for name, summary in (("full", full), ("partial", partial)):
        console = Console(width=150, record=True)
        console.print(bench_table(summary))
        texts[name] = console.export_text()
        assert "modelwatch serve" in texts[name] and "command → last replica's ack" in texts[name]
        png = draw(summary, tmp_path / f"{name}.png")
        assert matplotlib.image.imread(png).shape[1] > 1000
    assert "missed" in texts["full"] and "met" in texts["full"]
    assert "missed" not in texts["partial"]  # nothing measured, nothing judged


def test_process_cpu_seconds_reads_a_live_child_only() -> None:
    child = subprocess.Popen([sys.executable, "-c", "sum(range(3_000_000))"])
    child.wait()
    assert process_cpu_seconds(os.getpid()) is not None
    assert process_cpu_seconds(os.getpid()) > 0  # type: ignore[operator]
    assert process_cpu_seconds(child.pid) is None  # reaped: gone
    pressure = cpu_pressure_us()
    assert pressure is None or pressure >= 0


def test_best_of_keeps_the_fastest_run_and_the_lowest_cpu() -> None:
    runs = [
        Throughput("service", 1000, 1000, 2.0, 500.0, 0.8, 0.8),
        Throughput("service", 1000, 1000, 1.0, 1000.0, 1.0, 1.0),
        Throughput("service", 1000, 1000, 4.0, 250.0, 0.5, 0.5),
    ]
    best = best_of(runs)
    assert (best.per_s, best.seconds, best.cpu_per_1000) == (1000.0, 1.0, 0.5)
    assert best_of([Throughput("x", 1, 1, 0.0, None, None, None)]).cpu_per_1000 is None


def test_least_squares_slope() -> None:
    assert least_squares_slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert least_squares_slope([(0.0, 1.0), (1.0, 9.0), (2.0, 1.0)]) == pytest.approx(0.0)
    assert least_squares_slope([(1.0, 1.0)]) is None
    assert least_squares_slope([(1.0, 1.0), (1.0, 2.0)]) is None


def test_resident_mb_reads_this_process_and_none_for_a_gone_one() -> None:
    mine = resident_mb(os.getpid())
    assert mine is not None and mine > 10
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert resident_mb(child.pid) is None


def test_serving_cost_of_a_canary_and_a_shadow_is_told_beside_the_plain_run() -> None:
    runs = [
        SteadyRun(300.0, 30.0, cpu_us_per_request=100.0),
        SteadyRun(1000.0, 30.0, cpu_us_per_request=80.0),
        SteadyRun(300.0, 30.0, cpu_us_per_request=120.0, mode="canary 0.1"),
        SteadyRun(300.0, 30.0, cpu_us_per_request=190.0, shadow_predictions=9000, mode="shadow"),
    ]
    figures = cost_figures(runs)
    assert figures["canary_cpu_us_per_request"] == 120.0 and figures["shadow_cpu_us_per_request"] == 190.0
    assert figures["canary_vs_plain_cpu"] == pytest.approx(1.2)  # beside the plain run at the same rate
    assert figures["shadow_vs_plain_cpu"] == pytest.approx(1.9)
    assert set(cost_figures(runs[:2]).values()) == {None}  # not measured: said so, not zero


def test_memory_figures_tell_first_last_largest_slope_and_drift() -> None:
    readings = [(0.0, 200.0), (60.0, 210.0), (120.0, 230.0), (180.0, 220.0)]
    got = memory_figures(readings, "monitor_")
    assert (got["monitor_rss_first_mb"], got["monitor_rss_last_mb"], got["monitor_rss_max_mb"]) == (
        200.0,
        220.0,
        230.0,
    )
    assert got["monitor_rss_drift"] == pytest.approx(0.15)  # the farthest reading, 230, off the first
    assert got["monitor_rss_slope_mb_per_min"] == pytest.approx(least_squares_slope(readings) * 60)  # type: ignore[operator]
    assert memory_figures([(0.0, 100.0), (1.0, 80.0)])["rss_drift"] == pytest.approx(0.2)  # shrinking too
    assert set(memory_figures([]).values()) == {None}


def test_lag_figures_are_messages_and_seconds_of_the_offered_traffic() -> None:
    got = lag_figures([100.0, 300.0, 200.0, 2000.0, 400.0], rate=500.0)  # 1,000 messages a second
    assert got["lag_samples"] == 5
    assert (got["lag_p50_messages"], got["lag_max_messages"]) == (300.0, 2000.0)
    assert (got["lag_p50_s"], got["lag_max_s"], got["lag_last_s"]) == (0.3, 2.0, 0.4)
    assert lag_figures([], 300.0)["lag_max_s"] is None


def test_plans_measure_the_live_part_at_both_rates_and_the_curve_in_full_only() -> None:
    assert DEFAULT.steady_rates == QUICK.steady_rates == (300.0, 1000.0)
    assert DEFAULT.steady_s == 120.0 and QUICK.steady_s == 30.0  # --quick: shorter, as its help says
    assert DEFAULT.steady_monitor and QUICK.steady_monitor and FULL.steady_monitor
    assert QUICK.monitor_points == DEFAULT.monitor_points == (20_000,)
    assert FULL.monitor_points == (20_000, 100_000, 1_000_000) == FULL.service_volumes
    steps = FULL.steps()
    assert "steady: one replica and the monitor at 1,000/s" in steps
    assert "monitor at 1,000,000 labelled" in steps and "service at 1,000,000 requests" in steps


def test_curve_figures_put_each_volume_beside_its_reference() -> None:
    service = [
        ServicePoint(
            n, _run("service", 10_000.0), replace(_run("pass-through", 50_000.0), cpu_per_1000=0.004)
        )
        for n in (20_000, 1_000_000)
    ]
    got = curve_figures([], service)
    assert got["service_cpu_us_at_1000000"] == pytest.approx(200.0)
    assert got["passthrough_cpu_us_at_20000"] == pytest.approx(4.0)
    assert got["service_vs_passthrough_cpu_at_20000"] == pytest.approx(0.02)
    assert got["monitor_cost_1m_vs_20k"] is None and got["monitor_rss_1m_vs_100k"] is None


def test_soak_judges_the_monitors_memory_and_renders() -> None:
    plan = SoakPlan(minutes=30, rate=300)
    flat = SteadyRun(
        300.0, 1800.0, warmup_s=300.0, monitor=True, monitor_rss_first_mb=300.0, monitor_rss_drift=0.04
    )
    grew = replace(flat, monitor_rss_drift=0.25)
    on = {"nproc": 2, "cpu_pressure_pct": 80.0}
    assert soak_summary(plan, flat, on)["targets"] == [
        {
            "key": "soak_monitor_rss_drift",
            "label": "the monitor's resident memory over a soak, off its first",
            "target": "<= 0.1",
            "value": 0.04,
            "met": True,
            "by": None,
        }
    ]
    summary = soak_summary(plan, grew, on)
    assert summary["targets"][0]["met"] is False and summary["targets"][0]["by"] == "2.5x the limit"
    assert summary["command"] == "modelwatch bench --soak --minutes 30 --rate 300"
    console = Console(width=200, record=True)
    console.print(soak_table(orjson.loads(orjson.dumps(summary))))
    text = console.export_text()
    assert "monitor" in text and "missed (2.5x the limit)" in text and "300.0 MB" in text


def test_bench_takes_one_mode_at_a_time() -> None:
    result = CliRunner().invoke(cli_app, ["bench", "--quick", "--soak"])
    assert result.exit_code != 0 and "one of --quick, --full and --soak" in result.output


def test_the_live_runs_monitor_config_is_the_demos_and_reads(tmp_path: Path) -> None:
    config = tomllib.loads(live_config(tmp_path).read_text())
    assert config["monitor"]["data_dir"] == str(tmp_path / "live-monitor-data")
    assert any(rule["name"] == "f1-low" for rule in config["alerts"])  # the rule the live run times
