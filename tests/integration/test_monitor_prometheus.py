"""The real monitor worker serves Prometheus metrics, /healthz and /readyz on --metrics-port: a scrape
shows, per version and window, exactly what the monitor emitted on the metrics topic, with its alerts and
the join's state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.endpoints import get
from tests.integration.monitor_support import (
    QUICK_MONITOR,
    QUICK_WINDOW_MS,
    MonitorProcess,
    Storefront,
    by_ts,
    read_events,
    topic_world,
    traffic,
    wait_for,
    write_config,
)
from tests.integration.serving_support import free_port

PARTITIONS = 3
W = QUICK_WINDOW_MS  # label window, ms of event time
MONITOR = QUICK_MONITOR
ALERTS = [{"name": "f1-low", "metric": "f1", "below": 0.3, "min_samples": 20, "severity": "critical"}]
RATIOS = {"accuracy": "accuracy_ratio", "precision": "precision_ratio", "recall": "recall_ratio",
          "f1": "f1_ratio", "error_rate": "error_ratio"}  # fmt: skip

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def probe(port: int, path: str) -> int | None:
    try:
        return get(port, path)[0]
    except OSError:  # not listening yet
        return None


def test_a_scrape_shows_what_the_monitor_emitted(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        config = write_config(tmp_path / "monitor.toml", {**MONITOR, "metrics_port": port}, ALERTS)
        monitor = MonitorProcess(settings, config, tmp_path)
        try:
            monitor.start()
            assert probe(port, "/healthz") == 200
            wait_for(lambda: probe(port, "/readyz") == 200, 60, "/readyz once the tables are recovered")

            t0 = int(time.time() * 1000)
            good = traffic("p-good", 120, seed=31, t0=t0, step_ms=20, hit=0.6, miss=0.05, missing=0.1)
            bad = traffic("p-bad", 100, seed=32, t0=t0 + 5, step_ms=20, hit=0, miss=0, exact=(0, 1))
            reqs = by_ts(good, bad)
            storefront = Storefront(settings)
            storefront.predictions(reqs)
            storefront.outcomes(reqs)
            storefront.tick(max(r.ts for r in reqs) + 3 * W, PARTITIONS)
            expired = {v: sum(r.version == v and r.expired(W) for r in reqs) for v in ("p-good", "p-bad")}
            totals = {"p-good": 120, "p-bad": 100}

            def last_events() -> dict[tuple[str, str], dict[str, Any]] | None:
                latest: dict[tuple[str, str], dict[str, Any]] = {}
                for m in read_events(settings, "metrics", "metrics"):
                    latest[(m["model_version"], m["window"]["kind"])] = m
                keys = [(v, k) for v in totals for k in ("count", "time")]
                done = all(key in latest and latest[key]["total"] == totals[key[0]] for key in keys)
                return latest if done else None

            emitted: dict[tuple[str, str], dict[str, Any]] = wait_for(
                last_events, 60, "final metrics", every=0.5
            )
            assert {v: emitted[(v, "count")]["expired"] for v in totals} == expired

            def scraped() -> Samples | None:
                samples = scrape(port)
                counted = {
                    v: sample(samples, "modelwatch_monitor_labelled_requests_total", model_version=v)
                    for v in totals
                }
                return samples if counted == {v: totals[v] - expired[v] for v in totals} else None

            samples: Samples = wait_for(scraped, 30, "the scrape to show the final counts", every=0.5)
            checked = 0
            for (version, kind), event in emitted.items():
                labels = {"model_version": version, "window": kind}
                for field, name in RATIOS.items():
                    value = sample(samples, f"modelwatch_monitor_{name}", **labels)
                    assert value == event[field], (version, kind, field, value, event[field])
                    checked += 1
                assert sample(samples, "modelwatch_monitor_window_requests", **labels) == event["n"]
                completeness = sample(samples, "modelwatch_monitor_label_completeness_ratio", **labels)
                assert completeness == event["labelled"] / event["n"]
                if kind == "count":
                    total = sample(
                        samples, "modelwatch_monitor_expired_requests_total", model_version=version
                    )
                    assert total == event["expired"]
            assert checked == 2 * 2 * len(RATIOS)
            assert sample(samples, "modelwatch_monitor_label_completeness_ratio", model_version="p-good",
                          window="count") < 1  # fmt: skip

            # The bad version's alert is firing on the topic and in the scrape; the good one's is not.
            alerts = [a for a in read_events(settings, "alerts", "alert") if a["rule"] == "f1-low"]
            assert [(a["model_version"], a["state"]) for a in alerts] == [("p-bad", "firing")]
            firing = {"alertname": "f1-low", "model_version": "p-bad", "severity": "critical"}
            assert sample(samples, "modelwatch_monitor_alert_firing", **firing) == 1
            assert not any(n == "modelwatch_monitor_alert_firing" and ("model_version", "p-good") in labels
                           for n, labels in samples)  # fmt: skip

            # The join: every partition this (only) worker owns, with its event-time clocks.
            for p in map(str, range(PARTITIONS)):
                assert sample(samples, "modelwatch_monitor_join_pending_requests", partition=p) is not None
                mark = sample(
                    samples, "modelwatch_monitor_join_watermark_seconds", partition=p, stream="outcomes"
                )
                assert mark is not None and mark * 1000 >= max(r.ts for r in reqs) + W  # event time, not ours
                lag = sample(samples, "modelwatch_monitor_join_event_time_lag_seconds", partition=p,
                             stream="outcomes")  # fmt: skip
                assert lag is not None and 0 <= lag <= 2 * MONITOR["label_window_s"]
            assert sample(samples, "modelwatch_monitor_ready") == 1
        finally:
            monitor.stop()


def test_healthz_answers_from_the_moment_the_monitor_is_built_and_readyz_waits(kafka_bootstrap: str) -> None:
    """Liveness must not wait for Faust to start its tasks (which may come after the worker says it is
    ready): the endpoints are up once the monitor exists; /readyz says 503 until a rebalance is done."""
    from streams.app import create_monitor  # Faust is slow to import

    port = free_port()
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor = create_monitor(
            settings.model_copy(
                update={"monitor": settings.monitor.model_copy(update={"metrics_port": port})}
            )
        )
        try:
            assert probe(port, "/healthz") == 200
            assert probe(port, "/readyz") == 503
        finally:
            assert monitor.exposition is not None
            monitor.exposition.stop_http()
