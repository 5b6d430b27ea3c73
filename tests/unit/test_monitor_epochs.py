"""Deployment epochs: a version no longer served has its firing alerts resolved with the reason and is not
judged any more; a version deployed again starts with fresh windows and alert states, so it can fire, and
be rolled back, again; all of it survives a restore from the changelog."""

from __future__ import annotations

from typing import Any

from schemas import codec
from schemas.metrics import Counts
from services.config import AlertRule
from services.deployment.commands import make
from streams.alerts import no_baseline
from streams.decisions import Decisions
from streams.epochs import epoch_token, epochs
from streams.fleet import Fleet
from streams.join import Labelled
from streams.rollback import RollbackPolicy, command_id
from streams.tracker import Emission, TrackerConfig, VersionTracker

NOW = 1_800_000_000_000
RULE = AlertRule(name="f1-low", metric="f1", below=0.3, min_samples=5, action="rollback")
CONFIG = TrackerConfig(count_window=20, emit_every_n=5, rules=(RULE,), dedupe_horizon=50)


def deploy(version: str, ts: int = NOW) -> dict[str, Any]:
    return make("deploy", version, "release", ts=ts)


def requests(version: str, start: int, n: int, good: bool) -> list[Labelled]:
    counts = Counts(2, 0, 0, 3) if good else Counts(0, 1, 1, 3)
    return [Labelled(f"{version}-{i}", version, 1000 * i, counts) for i in range(start, start + n)]


def alerts(emissions: list[Emission] | list[tuple[VersionTracker, Emission]]) -> list[dict[str, Any]]:
    out = []
    for e in emissions:
        emission = e[1] if isinstance(e, tuple) else e
        out += [a for _, a in emission.alerts]
    return out


def test_epochs_begin_when_another_version_becomes_the_commanded_one() -> None:
    d1, d2, again, back = deploy("v1"), deploy("v2"), deploy("v2"), make("rollback", "v1", "r", ts=NOW)
    history = epochs([d1, d2, again, back])
    assert history.commanded is not None and history.commanded.command_id == back["command_id"]
    # Deploying the version in force again does not begin an epoch; a rollback to v1 does.
    assert history.latest["v2"].command_id == d2["command_id"]
    assert history.latest["v1"].command_id == back["command_id"]
    assert "no longer served: rollback to v1" in history.describe_end("v2")
    assert epochs([]).commanded is None and epoch_token(None) is None


def test_a_rolled_back_version_resolves_with_a_reason_and_redeployed_is_rolled_back_again() -> None:
    decisions = Decisions(RollbackPolicy(0), no_baseline)
    v1, v2 = VersionTracker("v1", CONFIG), VersionTracker("v2", CONFIG)
    trackers = {"v1": v1, "v2": v2}
    applied = [deploy("v1", NOW - 10_000), deploy("v2", NOW - 5_000)]
    decisions.follow_epochs(trackers, Fleet.of_commands(applied))
    assert v2.epoch == applied[1]["command_id"]
    v1.add_bundle(requests("v1", 0, 10, good=True), offset=0)
    [firing] = alerts(v2.add_bundle(requests("v2", 0, 5, good=False), offset=0))
    assert firing["state"] == "firing" and epoch_token(v2.epoch) in firing["alert_id"]
    [first] = decisions.rollbacks(trackers, Fleet.of_commands(applied), [firing], NOW)
    applied.append(first)

    [resolved] = alerts(decisions.follow_epochs(trackers, Fleet.of_commands(applied)))
    assert (resolved["alert_id"], resolved["state"], resolved["cause"]) == (
        firing["alert_id"],
        "resolved",
        "not_served",
    )
    assert "v2 is no longer served: rollback to v1" in resolved["message"]
    codec("alert").validate(resolved)
    assert v2.retired and not v2.firing()
    # Its late requests are counted, not judged: no second alert on a version nobody serves.
    assert alerts(v2.add_bundle(requests("v2", 5, 20, good=False), offset=1)) == []
    assert decisions.follow_epochs(trackers, Fleet.of_commands(applied)) == []  # nothing more to end

    applied.append(deploy("v2", NOW + 10_000))  # the same version, deployed again, still bad
    decisions.follow_epochs(trackers, Fleet.of_commands(applied))
    assert v2.total == 25 and v2.snapshot("count")["n"] == 0  # fresh windows; the total goes on
    [again] = alerts(v2.add_bundle(requests("v2", 25, 5, good=False), offset=2))
    assert again["state"] == "firing" and again["alert_id"] != firing["alert_id"]
    [second] = decisions.rollbacks(trackers, Fleet.of_commands(applied), [again], NOW + 20_000)
    assert second["command_id"] == command_id(again["alert_id"]) != first["command_id"]
    assert second["model_version"] == "v1"


def test_a_version_redeployed_while_firing_resolves_and_starts_afresh() -> None:
    decisions = Decisions(RollbackPolicy(0), no_baseline)
    v2 = VersionTracker("v2", CONFIG)
    applied = [deploy("v2")]
    decisions.follow_epochs({"v2": v2}, Fleet.of_commands(applied))
    [firing] = alerts(v2.add_bundle(requests("v2", 0, 5, good=False), offset=0))
    applied += [deploy("v1"), deploy("v2")]
    [resolved] = alerts(decisions.follow_epochs({"v2": v2}, Fleet.of_commands(applied)))
    assert resolved["alert_id"] == firing["alert_id"] and resolved["cause"] == "redeployed"
    assert v2.epoch == applied[-1]["command_id"] and not v2.retired


def test_traffic_of_a_version_never_commanded_is_judged_as_before() -> None:
    decisions = Decisions(RollbackPolicy(0), no_baseline)
    shadow = VersionTracker("shadow", CONFIG)
    assert decisions.follow_epochs({"shadow": shadow}, Fleet.of_commands([deploy("v1")])) == []
    [firing] = alerts(shadow.add_bundle(requests("shadow", 0, 5, good=False), offset=0))
    assert firing["alert_id"] == "f1-low:shadow:5"


def test_epochs_survive_a_restore_from_the_changelog() -> None:
    decisions = Decisions(RollbackPolicy(0), no_baseline)
    live = VersionTracker("v2", CONFIG)
    changelog: dict[str, dict[str, Any]] = {}

    def persist() -> None:
        for key, value in live.changes():
            if value is None:
                changelog.pop(key, None)
            else:
                changelog[key] = value

    applied = [deploy("v1"), deploy("v2")]
    decisions.follow_epochs({"v2": live}, Fleet.of_commands(applied))
    live.add_bundle(requests("v2", 0, 300, good=False), offset=0)
    persist()
    applied += [make("rollback", "v1", "r", ts=NOW), deploy("v2")]
    decisions.follow_epochs({"v2": live}, Fleet.of_commands(applied))
    live.add_bundle(requests("v2", 300, 7, good=True), offset=1)
    persist()

    restored = VersionTracker.restore("v2", changelog.values(), CONFIG)
    assert (restored.epoch, restored.epoch_start, restored.retired) == (live.epoch, 300, False)
    for kind in ("count", "time"):
        assert restored.snapshot(kind) == live.snapshot(kind)
    assert restored.snapshot("count")["n"] == 7
    # A replay of an earlier epoch's request is still recognised, and not counted in the new windows.
    replay = requests("v2", 299, 1, good=False)
    assert restored.add_bundle(replay, offset=2) == [] and restored.duplicates == 1
