"""The rollback policy's guards: the version served only, cooldown, healthy earlier versions only, one id;
and the decision taken again at every evaluation, so a cooldown delays a rollback and does not veto it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from schemas.metrics import Counts
from services.config import AlertRule
from services.deployment.commands import History, make, verify
from streams.alerts import no_baseline
from streams.decisions import Decisions
from streams.fleet import Fleet
from streams.join import Labelled
from streams.rollback import ISSUER, RollbackPolicy, command_id
from streams.tracker import TrackerConfig, VersionTracker

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
    """``served`` says what the live replicas acknowledged; without it, none has said anything yet."""
    fleet = dataclasses.replace(Fleet.of_commands(applied), acknowledged=kw.pop("served", None))
    return policy.decide(
        alert=firing(version, kw.pop("aid", f"f1-low:{version}:100")),
        fleet=kw.pop("fleet", fleet),
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
    assert d.command is None and "not the version served" in d.reason


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
    assert Fleet.of_commands(applied).rolled_back_for_alerts == {"v2"}
    d = decide(RollbackPolicy(MIN), "v3", applied)
    assert d.command is not None and d.command["model_version"] == "v1"
    d = decide(RollbackPolicy(MIN), "v3", applied, unhealthy={"v3", "v1"})
    assert d.command is None and "no healthy earlier version" in d.reason


def test_the_cooldown_delays_the_rollback_and_after_it_exactly_one_command_is_ordered() -> None:
    """A bad hotfix deployed 30 s after an operator's rollback: refused while the cooldown runs, ordered
    once it has passed, and never again once it is on the command topic."""
    policy = RollbackPolicy(MIN)
    manual = make("rollback", "v1", "by hand", ts=NOW - 30_000)
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN), manual, deploy("v3", NOW - 20_000)]
    ordered = []
    for now in range(NOW, NOW + 2 * MIN, 5_000):  # an evaluation every 5 s
        d = decide(policy, "v3", applied, now=now)
        if d.command is not None:
            ordered.append((now, d.command))
            applied.append(d.command)  # the command topic shows it from the next evaluation on
        elif not ordered:
            assert "cooldown" in d.reason
    [(at, command)] = ordered
    assert at == NOW + 30_000  # the first evaluation once the operator's rollback is 60 s old
    assert (command["model_version"], command["command_id"]) == ("v1", command_id("f1-low:v3:100"))


def test_a_rollback_stamped_in_the_future_holds_the_cooldown_from_when_it_was_read_not_longer() -> None:
    policy = RollbackPolicy(MIN)
    ahead = make("rollback", "v1", "operator's clock 10 min ahead", ts=NOW + 10 * MIN)
    applied = [deploy("v1", NOW - 10 * MIN), ahead, deploy("v2", NOW)]
    assert "cooldown" in decide(policy, "v2", applied, now=NOW).reason
    assert decide(policy, "v2", applied, now=NOW + MIN).command is not None


def test_while_our_rollback_is_on_its_way_another_rule_firing_on_the_same_version_orders_nothing() -> None:
    policy = RollbackPolicy(0)  # no cooldown: only the command in flight holds the second one
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    assert decide(policy, "v2", applied, aid="f1-low:v2:100").command is not None
    d = decide(policy, "v2", applied, aid="recall-low:v2:120", now=NOW + 1000)
    assert d.command is None and "on its way" in d.reason
    # The same alert asked again is settled by its own command, in flight or on the topic.
    assert decide(policy, "v2", applied, aid="f1-low:v2:100", now=NOW + 1000).settled


def test_a_version_not_served_is_decided_again_once_it_is_served() -> None:
    policy = RollbackPolicy(MIN)
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    assert "not the version served" in decide(policy, "v2", applied, served="v1").reason
    assert decide(policy, "v2", applied, served="v2").command is not None


RULE = AlertRule(name="f1-low", metric="f1", below=0.3, min_samples=5, action="rollback")


def bad(version: str, start: int, n: int) -> list[Labelled]:
    return [
        Labelled(f"{version}-{i}", version, 1000 * i, Counts(0, 1, 1, 3)) for i in range(start, start + n)
    ]


def test_each_evaluation_decides_again_so_the_rollback_comes_when_the_cooldown_has_passed() -> None:
    """The monitor's evaluations (batches and ticks) with a rollback alert firing since the first one."""
    config = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,))
    tracker = VersionTracker("v3", config)
    manual = make("rollback", "v1", "by hand", ts=NOW - 30_000)
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN), manual, deploy("v3", NOW - 20_000)]
    decisions = Decisions(RollbackPolicy(MIN), no_baseline)
    [emission] = tracker.add_bundle(bad("v3", 0, 5), offset=0)
    [(_, event)] = emission.alerts
    assert decisions.rollbacks({"v3": tracker}, Fleet.of_commands(applied), [event], NOW) == []
    assert "rollback cooldown" in event["message"]
    ordered = []
    for now in range(NOW + 5_000, NOW + 2 * MIN, 5_000):  # ticks with nothing new to count
        for command in decisions.rollbacks({"v3": tracker}, Fleet.of_commands(applied), [], now):
            ordered.append(now)
            applied.append(command)
    assert ordered == [NOW + 30_000]
    assert applied[-1]["alert_id"] == event["alert_id"] and applied[-1]["model_version"] == "v1"


def test_a_decision_waits_for_the_history_and_is_taken_once_it_is_read() -> None:
    config = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,))
    tracker = VersionTracker("v2", config)
    decisions = Decisions(RollbackPolicy(MIN), no_baseline)
    [emission] = tracker.add_bundle(bad("v2", 0, 5), offset=0)
    [(_, event)] = emission.alerts
    assert decisions.rollbacks({"v2": tracker}, None, [event], NOW) == []
    assert "history is still being read" in event["message"]
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN)]
    [command] = decisions.rollbacks({"v2": tracker}, Fleet.of_commands(applied), [], NOW + 1000)
    assert command["command_id"] == command_id(event["alert_id"])


def test_a_waiting_decision_is_logged_once_per_reason_not_at_every_evaluation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,))
    tracker = VersionTracker("v3", config)
    manual = make("rollback", "v1", "by hand", ts=NOW - 30_000)
    applied = [deploy("v1", NOW - 10 * MIN), deploy("v2", NOW - 5 * MIN), manual, deploy("v3", NOW - 20_000)]
    decisions = Decisions(RollbackPolicy(MIN), no_baseline)
    tracker.add_bundle(bad("v3", 0, 5), offset=0)
    with caplog.at_level(logging.INFO, logger="modelwatch.monitor"):
        for now in range(NOW, NOW + 40_000, 1_000):
            for command in decisions.rollbacks({"v3": tracker}, Fleet.of_commands(applied), [], now):
                applied.append(command)
    said = [r.getMessage() for r in caplog.records]
    # Waiting for the cooldown (once, though its countdown changes), then rolling back; after that v3 is
    # no longer served and nothing more is decided on it.
    assert len(said) == 2, said
    assert "cooldown" in said[0] and "rolling back to v1" in said[1]
