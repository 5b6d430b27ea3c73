"""A tiny benchmark run on the real broker: the harness works end to end. It asserts what was measured and
that everything was answered, never how fast (the figures of a test run on a shared machine mean nothing).
"""

from __future__ import annotations

import orjson

from services import kafka
from services.bench import BenchPlan, run_bench
from services.bench.experiments import ExperimentPlan
from services.bench.stats import REQUIRED_KEYS
from services.config import load_settings

TINY = BenchPlan(
    mode="tiny",
    requests=3_000,
    naive_requests=300,
    rounds=1,  # a round starts four processes; best_of is unit-tested
    latency_rates=(200.0,),
    latency_s=3.0,
    monitor_labelled=2_000,
    micro_s=0.05,
    faust=False,  # the worker's start-up alone takes longer than this whole test should
    live=False,
    train_sessions=5_000,
    steady_rates=(100.0,),  # not the targets' 300 and 1,000/s: judged only in a real run
    steady_s=3.0,
    steady_idle_s=2.0,
    steady_warmup_s=1.0,
    experiment_s=2.0,
    # A few seconds of the simulation: the harness, not the guarantee (tests/integration/test_experiments_*).
    experiments=ExperimentPlan(
        experiments=10,
        training_sessions=5_000,
        pool_requests=5_000,
        pre_period_requests=5_000,
        batch=500,
        max_duration_s=30.0,
    ),
)


def test_tiny_bench_measures_everything_and_leaves_nothing_behind(kafka_bootstrap: str) -> None:
    settings = load_settings(bootstrap=kafka_bootstrap)
    steps: list[str] = []
    result = run_bench(settings, TINY, step=steps.append)
    s = orjson.loads(orjson.dumps(result.as_json()))  # what --json writes

    assert steps == TINY.steps()
    assert set(REQUIRED_KEYS) <= set(s)
    assert s["machine"]["nproc"] >= 1 and s["date"]
    # Every contender answered every request it was given, once each.
    assert s["passthrough_answered"] == s["service_answered"] == s["exactly_once_answered"] == TINY.requests
    assert s["naive_answered"] == s["naive_count"] == TINY.naive_requests
    for key, runs in s["throughput_rounds"].items():
        assert len(runs) == TINY.rounds, key
        assert all(run["unique"] == run["outputs"] for run in runs), key  # nobody answered twice
    for key in ("passthrough_per_s", "service_per_s", "naive_per_s", "exactly_once_per_s"):
        assert s[key] > 0, key
    for key in ("service_vs_passthrough", "service_vs_naive", "exactly_once_ratio"):
        assert s[key] > 0, key
    assert s["service_cpu_s_per_1000"] > 0
    # Latency: every paced request was answered; the percentiles are ordered.
    (latency,) = s["latency"]
    assert latency["answered"] == latency["sent"] == int(TINY.latency_rates[0] * TINY.latency_s)
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert s["p99_ms"] is None  # the target's rate, 1,000/s, was not offered
    # The plain monitor counted every labelled request; the Faust worker was not run.
    assert s["details"]["monitor_raw"]["labelled"] == TINY.monitor_labelled
    assert s["monitor_raw_per_s"] > 0
    assert s["monitor_per_s"] is None and s["monitor_vs_raw"] is None and s["ack_ms"] is None
    # The plain monitor's volume curve is the plan's one volume.
    assert [p["labelled"] for p in s["monitor_curve"]] == [TINY.monitor_labelled]
    assert (
        s["monitor_curve"][0]["faust"] is None and s["monitor_curve"][0]["plain"]["cpu_us_per_labelled"] > 0
    )
    # The steady run: the replica answered what was offered, and its CPU and memory were read, and the
    # Faust monitor's beside it, with its lag on the joined topics...
    # ...then again at the first rate with a canary running and with a shadow (the candidate scoring twice).
    assert [(run["rate"], run["mode"], run["monitor"]) for run in s["steady"]] == [
        (100.0, "plain", True),
        (100.0, "canary 0.1", False),
        (100.0, "shadow", False),
    ]
    live = s["steady"][0]
    assert live["monitor_cpu_share"] > 0 and live["monitor_rss_last_mb"] > 100  # Faust, scikit-learn
    assert live["monitor_cpu_us_per_request"] > 0 and live["monitor_rss_first_mb"] > 0
    assert live["monitor_idle_cpu_share"] is not None and live["monitor_idle_cpu_share"] < 0.5
    assert live["lag_samples"] >= 2 and live["lag_max_s"] is not None and live["lag_max_s"] >= 0
    assert s["monitor_cpu_share_100"] == live["monitor_cpu_share"] and s["monitor_lag_max_s_100"] is not None
    assert s["monitor_cpu_share_300"] is None and s["monitor_lag_max_s_1000"] is None
    assert s["steady"][2]["shadow_predictions"] > 0 and s["steady"][1]["shadow_predictions"] == 0
    assert s["canary_vs_plain_cpu"] > 0 and s["shadow_vs_plain_cpu"] > 0
    for steady in s["steady"]:
        assert steady["requests"] > 0 and steady["cpu_share"] > 0 and steady["rss_last_mb"] > 0
        assert steady["cpu_us_per_request"] > 0
        # Idle means a replica with its model and partitions (about 1% of a core), not one still starting:
        # the second run's replica must not be timed from the first one's log line.
        assert steady["idle_cpu_share"] is not None and steady["idle_cpu_share"] < 0.3
    assert s["replica_cpu_share_300"] is None
    assert set(s["codec_us"]) >= {"request_decode_us", "prediction_decode_us", "outcome_decode_us"}
    assert all(v > 0 for v in (*s["codec_us"].values(), *s["scoring_us"].values()))
    # The experiments' table: every scenario ran its experiments, each to a decision or the deadline.
    assert result.experiments is not None
    rows = s["experiments"]["results"]
    assert len(rows) == len(result.experiments.results) >= 6
    for r in rows:
        decided = r["aborted"]["count"] + r["promoted"]["count"] + r["inconclusive"]["count"]
        assert decided == r["aborted"]["total"] == 10
    # The run's topics are gone.
    topics = kafka.admin(settings).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(s["topic_prefix"])]
