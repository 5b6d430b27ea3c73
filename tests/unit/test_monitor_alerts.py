"""Alert rules: min_samples, for, hysteresis, one firing per (rule, version), baselines, drift."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from services.config import AlertRule, load_settings
from streams.alerts import AlertState, DriftWatch, RegistryBaselines, alert_id, judge, threshold_of

RULE = AlertRule(name="f1-low", metric="f1", below=0.3, resolve_above=0.4, min_samples=50, **{"for": 3})


def run(rule: AlertRule, values: list[tuple[float | None, int]]) -> list[tuple[int, str, str]]:
    """Judge (value, n) evaluations in turn; return (index, state, alert_id) of each transition."""
    state = AlertState()
    out = []
    for i, (value, n) in enumerate(values):
        event = judge(
            rule, state, version="v1", value=value, n=n, position=10 * i, threshold=rule.below, ts=i
        )
        if event is not None:
            out.append((i, event["state"], event["alert_id"]))
    return out


def test_fires_after_for_consecutive_breaches_and_once() -> None:
    values = [(0.5, 100), (0.2, 100), (0.2, 100), (0.2, 100), (0.1, 100), (0.2, 100)]
    assert run(RULE, values) == [(3, "firing", "f1-low:v1:10")]


def test_a_good_evaluation_breaks_the_streak() -> None:
    values = [(0.2, 100), (0.2, 100), (0.31, 100), (0.2, 100), (0.2, 100), (0.2, 100)]
    assert run(RULE, values) == [(5, "firing", "f1-low:v1:30")]


def test_no_judgement_below_min_samples_or_undefined() -> None:
    # Too little data or an undefined metric neither breaks a streak nor extends it.
    values = [(0.2, 100), (0.0, 49), (None, 100), (0.2, 100), (0.2, 100)]
    assert run(RULE, values) == [(4, "firing", "f1-low:v1:0")]
    assert run(RULE, [(0.0, 49)] * 10) == []


def test_hysteresis_resolves_only_above_resolve_above() -> None:
    values = [(0.2, 100)] * 3 + [(0.35, 100), (0.4, 100), (0.41, 100), (0.2, 100)]
    assert run(RULE, values) == [(2, "firing", "f1-low:v1:0"), (5, "resolved", "f1-low:v1:0")]


def test_without_resolve_above_it_resolves_at_the_threshold() -> None:
    rule = AlertRule(name="acc", metric="accuracy", below=0.5, min_samples=1)
    values = [(0.4, 5), (0.49, 5), (0.5, 5), (0.4, 5)]
    assert run(rule, values) == [
        (0, "firing", "acc:v1:0"),
        (2, "resolved", "acc:v1:0"),
        (3, "firing", "acc:v1:30"),
    ]


def test_alert_events_are_valid_and_say_why() -> None:
    from schemas import codec

    state = AlertState()
    rule = RULE.model_copy(update={"for_": 1, "severity": "critical", "action": "rollback"})
    event = judge(rule, state, version="v9", value=0.1, n=60, position=123, threshold=0.3, ts=5)
    assert event is not None
    codec("alert").validate(event)
    assert (event["severity"], event["action"], event["n"], event["total"]) == (
        "critical",
        "rollback",
        60,
        123,
    )
    assert "below 0.3000" in event["message"]


def test_long_ids_stay_within_the_schema() -> None:
    aid = alert_id("r" * 128, "v" * 128, 10**12)
    assert len(aid) <= 256 and aid == alert_id("r" * 128, "v" * 128, 10**12)


def test_baseline_rules_use_a_relative_drop() -> None:
    rule = AlertRule(name="drop", metric="f1", below_baseline=0.25)
    assert threshold_of(rule, "v1", lambda v, m: (0.4, None)) == (pytest.approx(0.3), None)
    assert threshold_of(rule, "v1", lambda v, m: (None, "no manifest")) == (None, "no manifest")
    state = AlertState()
    assert judge(rule, state, version="v1", value=0.0, n=10**6, position=1, threshold=None, ts=0) is None
    assert state == AlertState()


def _register(registry_dir: Path, metrics: dict[str, float | None]) -> str:
    from services.registry import Registry

    manifest = Registry(str(registry_dir)).register({"a": "model"}, metrics=metrics, data_summary={})
    return manifest.version


def test_registry_baselines_read_the_manifest_lazily(tmp_path: Path) -> None:
    settings = load_settings(registry=str(tmp_path / "registry"))
    version = _register(tmp_path / "registry", {"f1": 0.42, "precision": None})
    baselines = RegistryBaselines(settings)
    assert baselines(version, "f1") == (0.42, None)
    assert baselines(version, "precision")[0] is None
    value, why = baselines("20990101T000000-deadbeef", "f1")
    assert value is None and why is not None and "no baseline" in why


def test_without_a_registry_module_baseline_rules_do_not_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "services.registry", None)  # as if that part were not installed
    value, why = RegistryBaselines(load_settings())("v1", "f1")
    assert value is None and why is not None and "not available" in why


def test_drift_warns_when_the_error_rate_shifts_up_then_resolves() -> None:
    import random

    rng = random.Random(1)
    watch = DriftWatch(delta=0.002)
    events: list[dict[str, Any]] = []
    for i, rate in enumerate([0.1] * 1500 + [0.6] * 1500 + [0.1] * 1500):
        event = watch.update(float(rng.random() < rate), version="v1", position=i, ts=i)
        if event is not None:
            events.append(event)
    states = [e["state"] for e in events]
    assert states == ["firing", "resolved"]
    assert 1500 <= events[0]["total"] < 1800 and events[0]["value"] > events[0]["threshold"]
