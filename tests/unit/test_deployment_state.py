"""The deployment state without a broker: commands in log order, replicas' answers, the rollback target."""

from __future__ import annotations

from typing import Any

import orjson

from services.deployment import commands
from services.deployment.state import MONITOR, DeploymentState
from streams.rollback import ISSUER

NOW = 1_800_000_000_000


def event(instance: str, kind: str, version: str | None, ts: int = NOW, **extra: Any) -> dict[str, Any]:
    return {"instance": instance, "event": kind, "model_version": version, "ts": ts, **extra}


def state_of(*cmds: dict[str, Any]) -> DeploymentState:
    state = DeploymentState(live_ms=15_000)
    for offset, command in enumerate(cmds):
        state.feed_command(command, offset)
    return state


def test_commanded_and_served_are_apart_when_no_replica_loads_the_new_version() -> None:
    v1 = commands.make("deploy", "v1", "a")
    v2 = commands.make("deploy", "v2", "b")
    state = state_of(v1, v2)
    for r in ("r1", "r2"):
        state.feed_event(event(r, "activated", "v1", NOW - 9000, command_id=v1["command_id"]))
        state.feed_event(
            event(r, "rejected", "v2", NOW - 8000, command_id=v2["command_id"], error=f"cannot load v2: {r}")
        )
        state.feed_event(event(r, "heartbeat", "v1", NOW - 1000, partitions=[0]))
    assert state.commanded == "v2"
    assert state.served(NOW) == "v1"
    assert state.serving(NOW) == {"r1": "v1", "r2": "v1"}
    assert state.rejected("v2") == {"r1": "cannot load v2: r1", "r2": "cannot load v2: r2"}
    assert state.unloadable("v2") and not state.unloadable("v1")
    assert {i: a.event for i, a in state.acks[v2["command_id"]].items()} == {
        "r1": "rejected",
        "r2": "rejected",
    }
    # A replica that loads it later (the registry fixed) takes it off the rejected list.
    state.feed_event(event("r1", "activated", "v2", NOW, command_id=v2["command_id"]))
    assert state.rejected("v2") == {"r2": "cannot load v2: r2"} and not state.unloadable("v2")


def test_a_replay_refused_does_not_undo_an_activation_and_silent_replicas_are_not_live() -> None:
    v1 = commands.make("deploy", "v1", "a")
    state = state_of(v1)
    state.feed_event(event("r1", "activated", "v1", NOW - 60_000, command_id=v1["command_id"]))
    state.feed_event(
        event("r1", "rejected", "v1", NOW - 50_000, command_id=v1["command_id"], error="already applied")
    )
    assert state.acks[v1["command_id"]]["r1"].event == "activated"
    assert not state.rejected("v1")  # a refused replay says nothing about loading
    assert state.served(NOW) is None and state.live(NOW - 40_000)
    state.feed_event_raw(b"{not json")
    assert state.malformed_events == 1


def test_served_is_what_most_live_replicas_serve() -> None:
    state = state_of(commands.make("deploy", "v1", "a"), commands.make("deploy", "v2", "b"))
    for r, version in (("r1", "v1"), ("r2", "v1"), ("r3", "v2")):
        state.feed_event(event(r, "heartbeat", version))
    assert state.served(NOW) == "v1"
    state.feed_event(event("r4", "heartbeat", "v2"))
    assert state.served(NOW) == "v2"  # a tie: the commanded one


def test_rollback_target_skips_versions_rolled_back_for_an_alert_and_ones_nobody_loaded() -> None:
    d1, d2, d3 = (commands.make("deploy", v, "x") for v in ("v1", "v2", "v3"))
    auto = commands.make("rollback", "v2", "f1 low", alert_id="a-1", issued_by=MONITOR)
    state = state_of(d1, d2, d3, auto)
    assert state.rollback_target() == ("v1", "")  # not v3: the monitor rolled it back for an alert
    # The demo's case: good, bad, the monitor back to good: there is nowhere healthy to go.
    demo = state_of(d1, d3, commands.make("rollback", "v1", "f1 low", alert_id="a-2", issued_by=MONITOR))
    target, why = demo.rollback_target()
    assert target is None and "v3 rolled back for an alert" in why and "--to" in why
    # A version no replica could load is no target either.
    broken = state_of(d1, d2, commands.make("deploy", "v4", "y"))
    broken.feed_event(event("r1", "rejected", "v2", error="cannot load v2: no version v2"))
    assert broken.rollback_target() == ("v1", "")
    assert state_of().rollback_target()[0] is None
    assert "no version was active before v1" in state_of(d1).rollback_target()[1]


def test_malformed_and_forged_commands_are_ignored_with_the_reason() -> None:
    state = DeploymentState(key="k")
    assert state.feed_command_raw(orjson.dumps(commands.make("deploy", "v1", "a", key="k")), 0)
    assert not state.feed_command_raw(orjson.dumps(commands.make("deploy", "v2", "b")), 1)
    assert not state.feed_command_raw(b"{", 2)
    assert state.commanded == "v1" and state.offsets == {state.applied[0]["command_id"]: 0}
    assert state.history.ignored[0][1].endswith("is not signed, and a signing key is set")


def test_the_monitor_signs_its_rollbacks_as_the_state_expects() -> None:
    # rolled_back_for_alerts also knows a monitor's rollback by its issuer: the two names must agree.
    assert MONITOR == ISSUER


def test_a_state_is_about_one_model_and_commands_without_one_are_the_default_models() -> None:
    home = DeploymentState(model="home", default_model="home")
    cart = DeploymentState(model="cart", default_model="home")
    legacy = commands.make("deploy", "h1", "from before models were named")  # no model: the default's
    cart_deploy = commands.make("deploy", "c1", "cart", model="cart")
    home_deploy = commands.make("deploy", "h2", "home", model="home")
    for offset, command in enumerate([legacy, cart_deploy, home_deploy]):
        home.feed_command(command, offset)
        cart.feed_command(command, offset)
    assert [c["model_version"] for c in home.applied] == ["h1", "h2"]
    assert [c["model_version"] for c in cart.applied] == ["c1"]
    assert (home.other_models, cart.other_models) == (1, 2)
    assert not home.history.ignored and not cart.history.ignored  # another model's is not "ignored"
    # One replica serving both models answers for each; each state hears only its model's answers.
    for state in (home, cart):
        state.feed_event(event("r1", "heartbeat", "h2", NOW, partitions=[0]))  # no model: the default's
        state.feed_event(event("r1", "heartbeat", "c1", NOW, partitions=[0], model="cart"))
    assert home.serving(NOW) == {"r1": "h2"}
    assert cart.serving(NOW) == {"r1": "c1"}
    # A signed command cannot be moved to another model: the model is inside what is signed.
    signed = commands.sign(commands.make("rollback", "c1", "r", model="cart"), "k")
    moved = {**signed, "model": "home"}
    assert DeploymentState(key="k", model="home").judge(moved) is not None
