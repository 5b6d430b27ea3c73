"""The monitor's Prometheus exposition: what the metrics events say, for the versions this worker owns."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

from services.config import AlertRule
from streams.exposition import FiringAlert, JoinPartition, MonitorMetrics, firing_alerts
from streams.join import Joiner
from streams.join_store import DictStore
from streams.metrics_agents import MetricsAgents
from streams.tracker import TrackerConfig, VersionTracker


def event(version: str, kind: str, **values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model_version": version,
        "window": {"kind": kind, "size": 40},
        "n": 40,
        "accuracy": 0.9,
        "precision": 0.5,
        "recall": 0.25,
        "f1": 1 / 3,
        "error_rate": 0.0,
        "labelled": 30,
        "expired_in_window": 10,
        "total": 100,
        "expired": 12,
        "failed": 2,
        "ts": 1,
    }
    return {**base, **values}


def test_a_scrape_shows_the_last_event_emitted_per_version_and_window() -> None:
    m = MonitorMetrics("no_purchase")
    tracker = VersionTracker("v1", TrackerConfig())
    m.emitted(event("v1", "count", f1=0.1))
    m.emitted(event("v1", "count"))  # the later one counts
    m.emitted(event("v1", "time", precision=None, n=4, labelled=1))
    m.refresh({"v1": tracker}, [], [], ready=True)
    count = {"model_version": "v1", "window": "count"}
    time = {"model_version": "v1", "window": "time"}
    assert m.value("modelwatch_monitor_f1_ratio", **count) == 1 / 3
    assert m.value("modelwatch_monitor_precision_ratio", **time) is None  # undefined: no sample
    assert m.value("modelwatch_monitor_recall_ratio", **time) == 0.25
    assert m.value("modelwatch_monitor_label_completeness_ratio", **count) == 0.75
    assert m.value("modelwatch_monitor_label_completeness_ratio", **time) == 0.25
    # Expired requests are in the total (counted as no purchase): labelled by an outcome = 100 - 12.
    assert m.value("modelwatch_monitor_labelled_requests_total", model_version="v1") == 88
    assert m.value("modelwatch_monitor_expired_requests_total", model_version="v1") == 12
    assert m.value("modelwatch_monitor_model_failures_total", model_version="v1") == 2
    assert m.value("modelwatch_monitor_ready") == 1


def test_with_unlabelled_dropped_the_total_is_all_labelled() -> None:
    m = MonitorMetrics("drop")
    m.emitted(event("v1", "count"))
    m.refresh({"v1": VersionTracker("v1", TrackerConfig())}, [], [], ready=False)
    assert m.value("modelwatch_monitor_labelled_requests_total", model_version="v1") == 100
    assert m.value("modelwatch_monitor_ready") == 0


def test_only_the_versions_this_worker_owns_are_exported() -> None:
    m = MonitorMetrics()
    m.emitted(event("mine", "count"))
    m.emitted(event("moved", "count"))
    m.refresh({"mine": VersionTracker("mine", TrackerConfig())}, [], [], ready=True)
    assert m.value("modelwatch_monitor_f1_ratio", model_version="mine", window="count") is not None
    assert m.value("modelwatch_monitor_f1_ratio", model_version="moved", window="count") is None
    assert m.value("modelwatch_monitor_labelled_requests_total", model_version="moved") is None
    # A version restored after a rebalance shows what it would emit before its first emission here.
    restored = VersionTracker("restored", TrackerConfig())
    m.refresh({"restored": restored}, [], [], ready=True)
    assert m.value("modelwatch_monitor_window_requests", model_version="restored", window="time") == 0
    assert m.value("modelwatch_monitor_f1_ratio", model_version="mine", window="count") is None


def test_the_join_shows_pending_requests_and_event_time_lag_per_partition() -> None:
    joiner = Joiner(DictStore(), label_window_ms=1000, out_of_order_ms=500)
    joiner.report("outcomes", 0, 10_000, False, 1)
    joiner.report("predictions", 0, 9_000, False, 1)
    m = MonitorMetrics()
    m.refresh({}, [JoinPartition.of(2, joiner, pending=7)], [], ready=True)
    assert m.value("modelwatch_monitor_join_pending_requests", partition="2") == 7
    assert m.value("modelwatch_monitor_join_watermark_seconds", partition="2", stream="outcomes") == 9.5
    assert m.value("modelwatch_monitor_join_event_time_lag_seconds", partition="2", stream="outcomes") == 0.5
    assert m.value("modelwatch_monitor_join_watermark_seconds", partition="2", stream="predictions") == 8.5


def test_firing_alerts_name_rule_version_and_severity() -> None:
    rule = AlertRule(name="f1-low", metric="f1", below=0.3, severity="critical")
    tracker = VersionTracker("v2", TrackerConfig(rules=(rule,)))
    tracker.alerts["f1-low"].firing = True
    alerts = firing_alerts([tracker], ["activation-rejected:v3:e0123abcd"])
    assert alerts == [
        FiringAlert("f1-low", "v2", "critical"),
        FiringAlert("activation-rejected", "v3", "warning"),
    ]
    m = MonitorMetrics()
    m.refresh({}, [], alerts, ready=True)
    labels = {"alertname": "f1-low", "model_version": "v2", "severity": "critical"}
    assert m.value("modelwatch_monitor_alert_firing", **labels) == 1


def test_ready_once_recovered_and_not_while_a_rebalance_or_recovery_runs() -> None:
    agents = MetricsAgents()
    agents.app = cast(Any, SimpleNamespace(rebalancing=False, in_recovery=False))
    agents.follower = cast(Any, SimpleNamespace(ready=threading.Event()))
    agents._generation = 0
    agents.follower.ready.set()
    assert not agents.is_ready()  # no rebalance has completed: the tables are not recovered yet
    agents._generation = 1
    assert agents.is_ready()
    for flag in ("rebalancing", "in_recovery"):
        setattr(agents.app, flag, True)
        assert not agents.is_ready(), flag
        setattr(agents.app, flag, False)
    agents.follower.ready.clear()
    assert not agents.is_ready()  # the deployment history is not read
