"""The monitor decides on what the fleet really serves: the replicas' acknowledgements, not the last command;
a version no replica could load is never the basis of a rollback, nor its target."""

from __future__ import annotations

from typing import Any

from schemas import codec
from schemas.metrics import Counts
from services.config import AlertRule
from services.deployment.commands import make
from services.deployment.state import MONITOR, DeploymentState
from streams import activations
from streams.alerts import no_baseline
from streams.decisions import Decisions
from streams.fleet import Fleet
from streams.join import Labelled
from streams.rollback import RollbackPolicy
from streams.tracker import TrackerConfig, VersionTracker

NOW = 1_800_000_000_000
MIN = 60_000
RULE = AlertRule(name="f1-low", metric="f1", below=0.3, min_samples=5, action="rollback")


def deploy(version: str, ts: int = NOW - 10 * MIN) -> dict[str, Any]:
    return make("deploy", version, "release", ts=ts)


def ack(state: DeploymentState, instance: str, kind: str, command: dict[str, Any], error: str = "") -> None:
    event = {"instance": instance, "event": kind, "model_version": command["model_version"], "ts": NOW - 1000}
    state.feed_event({**event, "command_id": command["command_id"], **({"error": error} if error else {})})


def stuck_on_v1() -> tuple[DeploymentState, list[dict[str, Any]]]:
    """v0, v1 served by two replicas, then v2, whose artifact neither replica can load."""
    cmds = [deploy("v0"), deploy("v1"), deploy("v2")]
    state = DeploymentState(live_ms=15_000)
    for offset, command in enumerate(cmds):
        state.feed_command(command, offset)
    for replica in ("r1", "r2"):
        ack(state, replica, "activated", cmds[0])
        ack(state, replica, "activated", cmds[1])
        ack(state, replica, "rejected", cmds[2], error=f"cannot load v2 on {replica}: digest mismatch")
    return state, cmds


def firing(version: str) -> dict[str, Any]:
    return {"alert_id": f"f1-low:{version}:1", "rule": "f1-low", "model_version": version, "metric": "f1"}


def test_served_is_what_the_replicas_acknowledged_not_the_last_command() -> None:
    state, _ = stuck_on_v1()
    fleet = Fleet.of(state, NOW)
    assert (fleet.commanded, fleet.served) == ("v2", "v1")
    assert fleet.unloadable == {"v2"}
    assert fleet.rejected["v2"] == {
        "r1": "cannot load v2 on r1: digest mismatch",
        "r2": "cannot load v2 on r2: digest mismatch",
    }


def test_with_no_replica_heard_the_commanded_version_is_served_unless_no_replica_could_load_it() -> None:
    assert Fleet.of_commands([deploy("v1"), deploy("v2")]).served == "v2"  # a first start
    state, _ = stuck_on_v1()
    assert Fleet.of(state, NOW + 10 * MIN).serving == {}  # every replica silent for ten minutes
    assert Fleet.of(state, NOW + 10 * MIN).served is None  # not v2: nobody ever loaded it


def test_an_alert_on_the_old_version_still_served_rolls_back_past_the_version_nobody_could_load() -> None:
    state, _ = stuck_on_v1()
    d = RollbackPolicy(MIN).decide(
        alert=firing("v1"), fleet=Fleet.of(state, NOW), unhealthy={"v1"}, now_ms=NOW
    )
    assert d.command is not None and d.command["model_version"] == "v0"  # not v2, commanded last


def test_a_version_nobody_could_load_is_never_the_basis_of_a_rollback() -> None:
    state, _ = stuck_on_v1()
    d = RollbackPolicy(MIN).decide(
        alert=firing("v2"), fleet=Fleet.of(state, NOW), unhealthy={"v2"}, now_ms=NOW
    )
    assert d.command is None and "no replica could load v2" in d.reason
    # Not even when no replica is live any more and nothing else is known.
    silent = Fleet.of(state, NOW + 10 * MIN)
    d = RollbackPolicy(MIN).decide(alert=firing("v2"), fleet=silent, unhealthy={"v2"}, now_ms=NOW)
    assert d.command is None


def test_after_a_rollback_for_an_alert_the_version_taken_out_is_the_one_served_not_the_unloadable_one() -> (
    None
):
    state, _ = stuck_on_v1()
    state.feed_command(make("rollback", "v0", "f1 low on v1", alert_id="f1-low:v1:1", issued_by=MONITOR), 3)
    fleet = Fleet.of(state, NOW)
    assert fleet.rolled_back_for_alerts == {"v1"}
    assert state.rollback_target()[0] is None  # v2 loaded by nobody, v1 rolled back for an alert


def bad(version: str, n: int) -> list[Labelled]:
    return [Labelled(f"{version}-{i}", version, 1000 * i, Counts(0, 1, 1, 3)) for i in range(n)]


def test_a_deploy_no_replica_could_load_retires_nobody_and_the_served_version_is_still_rolled_back() -> None:
    state, _ = stuck_on_v1()
    config = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,))
    v1 = VersionTracker("v1", config)
    decisions = Decisions(RollbackPolicy(MIN), no_baseline)
    fleet = Fleet.of(state, NOW)
    decisions.follow_epochs({"v1": v1}, fleet)
    assert not v1.retired  # v2 is commanded, v1 still served
    [emission] = v1.add_bundle(bad("v1", 5), offset=0)
    [(_, event)] = emission.alerts
    [command] = decisions.rollbacks({"v1": v1}, fleet, [event], NOW)
    assert command["model_version"] == "v0" and "rolling back to v0" in event["message"]


def test_a_version_retires_once_the_replicas_acknowledge_another_not_when_it_is_commanded() -> None:
    cmds = [deploy("v1"), deploy("v2")]
    state = DeploymentState(live_ms=15_000)
    for offset, command in enumerate(cmds):
        state.feed_command(command, offset)
    ack(state, "r1", "activated", cmds[0])
    v1 = VersionTracker("v1", TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,)))
    decisions = Decisions(RollbackPolicy(MIN), no_baseline)
    decisions.follow_epochs({"v1": v1}, Fleet.of(state, NOW))
    assert not v1.retired  # commanded v2, but r1 has not activated it yet
    ack(state, "r1", "activated", cmds[1])
    decisions.follow_epochs({"v1": v1}, Fleet.of(state, NOW))
    assert v1.retired


# -- rejected activations surfaced as an alert --------------------------------------------------------------


def transitions(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["alert_id"], a["state"]) for a in alerts}


def test_replicas_rejecting_the_commanded_version_fire_one_alert_naming_them_and_their_reasons() -> None:
    state, cmds = stuck_on_v1()
    [alert] = activations.evaluate(Fleet.of(state, NOW), set(), NOW)
    codec("alert").encode(alert)  # the contract holds
    assert alert["alert_id"] == activations.alert_id("v2", cmds[2]["command_id"])
    assert (alert["rule"], alert["state"], alert["model_version"], alert["value"]) == (
        "activation-rejected",
        "firing",
        "v2",
        2.0,
    )
    assert (
        "rejected by 2 replica(s) (r1, r2)" in alert["message"] and "the fleet serves v1" in alert["message"]
    )
    assert "r1: cannot load v2 on r1: digest mismatch" in alert["message"]
    # Sent once: the alert topic (read again after a restart) says it is firing.
    assert activations.evaluate(Fleet.of(state, NOW), transitions([alert]), NOW) == []
    assert activations.evaluate(None, set(), NOW) == []  # the state is still being read


def test_the_rejection_alert_resolves_when_the_version_is_no_longer_commanded() -> None:
    state, _ = stuck_on_v1()
    published = transitions(activations.evaluate(Fleet.of(state, NOW), set(), NOW))
    state.feed_command(make("rollback", "v1", "v2 will not load"), 3)
    [resolved] = activations.evaluate(Fleet.of(state, NOW), published, NOW)
    codec("alert").encode(resolved)
    assert (resolved["state"], resolved["cause"], resolved["model_version"]) == (
        "resolved",
        "not_commanded",
        "v2",
    )
    assert published == {(resolved["alert_id"], "firing")}
    assert activations.evaluate(Fleet.of(state, NOW), published | transitions([resolved]), NOW) == []


def test_the_rejection_alert_resolves_once_every_live_replica_has_activated_the_version() -> None:
    state, cmds = stuck_on_v1()
    published = transitions(activations.evaluate(Fleet.of(state, NOW), set(), NOW))
    ack(state, "r1", "activated", cmds[2])  # the artifact was repaired; r1 restarted and loaded it
    assert activations.evaluate(Fleet.of(state, NOW), published, NOW) == []  # r2 still rejects it
    ack(state, "r2", "activated", cmds[2])
    [resolved] = activations.evaluate(Fleet.of(state, NOW), published, NOW)
    assert (resolved["state"], resolved["cause"]) == ("resolved", "activated")


def test_the_same_version_deployed_again_and_rejected_again_is_a_new_incident() -> None:
    state, cmds = stuck_on_v1()
    first = activations.evaluate(Fleet.of(state, NOW), set(), NOW)
    state.feed_command(make("rollback", "v1", "v2 will not load"), 3)
    again = deploy("v2", NOW)
    state.feed_command(again, 4)
    for replica in ("r1", "r2"):
        ack(state, replica, "rejected", again, error="cannot load v2: digest mismatch")
    out = activations.evaluate(Fleet.of(state, NOW), transitions(first), NOW)
    assert sorted((a["state"], a["alert_id"]) for a in out) == [
        ("firing", activations.alert_id("v2", again["command_id"])),
        ("resolved", activations.alert_id("v2", cmds[2]["command_id"])),
    ]


def test_a_canary_leaves_the_incumbent_commanded_and_out_of_the_epochs() -> None:
    """A shadow or canary command names its candidate; the monitor must not take it for a deploy (its epochs,
    its rollback targets): the incumbent stays what is commanded until a promote."""
    v1 = deploy("v1")
    canary = make("canary", "v2", "try v2", ts=NOW - 5 * MIN, traffic=0.2)
    fleet = Fleet.of_commands([v1, canary])
    assert fleet.commanded == "v1"
    assert [c["action"] for c in fleet.applied] == ["deploy"]
    promote = make("promote", "v2", "v2 is no worse", ts=NOW - MIN, experiment_id=f"e-{canary['command_id']}")
    promoted = Fleet.of_commands([v1, canary, promote])
    assert promoted.commanded == "v2" and [c["action"] for c in promoted.applied] == ["deploy", "promote"]
