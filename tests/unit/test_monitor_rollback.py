"""The rollback policy's guards: active version only, cooldown, healthy earlier versions only, one id."""

from __future__ import annotations

from typing import Any

from services.deployment.commands import History, make, verify
from streams.rollback import ISSUER, RollbackPolicy, command_id, rolled_back_for_alerts

NOW = 1_800_000_000_000
MIN = 60_000


def deploy(version: str, ts: int, **extra: Any) -> dict[str, Any]:
    return make("deploy", version, "release", ts=ts, **extra)


def firing(version: str, aid: str = "f1-low:v:100") -> dict[str, Any]:
    return {
        "alert_id": aid,
        "rule": "f1-low",
        "state": "firing",
        "model_version": version,
        "metric": "f1",
        "value": 0.1,
        "threshold": 0.3,
    }


def decide(policy: RollbackPolicy, version: str, applied: list[dict[str, Any]], **kw: Any) -> Any:
    return policy.decide(
        alert=firing(version, kw.pop("aid", f"f1-low:{version}:100")),
        applied=applied,
        unhealthy=kw.pop("unhealthy", {version}),
        now_ms=kw.pop("now", NOW),
    )


def test_rolls_the_active_version_back_to_the_previous_one_with_an_id_from_the_alert() -> None:
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    d = decide(RollbackPolicy(MIN, signing_key="k"), "v2", applied)
    assert d.command is not None
    c = d.command
    assert (c["action"], c["model_version"], c["alert_id"], c["issued_by"]) == (
        "rollback",
        "v1",
        "f1-low:v2:100",
        ISSUER,
    )
    assert c["command_id"] == command_id("f1-low:v2:100")
    verify(c, "k")  # signed
    assert "rolling back to v1" in d.reason


def test_the_same_alert_gives_the_same_command_id_which_services_apply_once() -> None:
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    first = decide(RollbackPolicy(MIN), "v2", applied).command
    again = decide(RollbackPolicy(MIN), "v2", applied, now=NOW + 1000).command  # after a crash
    assert first is not None and again is not None and first["command_id"] == again["command_id"]
    history = History.of([*applied, first, again])
    assert [c["model_version"] for c in history.applied] == ["v1", "v2", "v1"]


def test_nothing_without_an_earlier_version_and_the_reason_says_so() -> None:
    d = decide(RollbackPolicy(MIN), "v1", [deploy("v1", NOW - MIN)])
    assert d.command is None and "no earlier version" in d.reason
    assert decide(RollbackPolicy(MIN), "v1", []).command is None


def test_only_the_active_version_is_rolled_back() -> None:
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    d = decide(RollbackPolicy(MIN), "v1", applied)
    assert d.command is None and "not the active version" in d.reason


def test_cooldown_after_any_rollback() -> None:
    policy = RollbackPolicy(10 * MIN)
    applied = [deploy("v1", NOW - 30 * MIN), deploy("v2", NOW - 20 * MIN), deploy("v3", NOW - 2 * MIN)]
    assert decide(policy, "v3", applied).command is not None
    # Ours was ordered a moment ago and has not come back on the topic yet: the next one waits.
    assert decide(policy, "v3", applied, aid="precision-low:v3:100", now=NOW + 1000).command is None
    # An operator's rollback on the topic counts too.
    manual = make("rollback", "v1", "by hand", ts=NOW - MIN)
    d = decide(RollbackPolicy(10 * MIN), "v4", [*applied, manual, deploy("v4", NOW - 1000)])
    assert d.command is None and "cooldown" in d.reason


def test_never_back_to_a_version_rolled_back_for_an_alert_nor_to_an_unhealthy_one() -> None:
    v2_out = make("rollback", "v1", "alert", ts=NOW - 40 * MIN, alert_id="f1-low:v2:7")
    applied = [
        deploy("v1", NOW - 60 * MIN),
        deploy("v2", NOW - 50 * MIN),
        v2_out,
        deploy("v3", NOW - 30 * MIN),
    ]
    assert rolled_back_for_alerts(applied) == {"v2"}
    d = decide(RollbackPolicy(MIN), "v3", applied)
    assert d.command is not None and d.command["model_version"] == "v1"
    d = decide(RollbackPolicy(MIN), "v3", applied, unhealthy={"v3", "v1"})
    assert d.command is None and "no healthy earlier version" in d.reason
