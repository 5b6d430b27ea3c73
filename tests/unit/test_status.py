"""The status document's pure parts: replicas gone after three heartbeats, alerts' last state."""

from __future__ import annotations

from services.deployment.state import DeploymentState
from services.ops.status import firing_alerts, replicas_of


def test_a_replica_is_gone_once_silent_for_three_heartbeats() -> None:
    state = DeploymentState()
    state.feed_event({"instance": "a", "event": "heartbeat", "model_version": "v1", "ts": 10_000})
    state.feed_event({"instance": "b", "event": "heartbeat", "model_version": "v1", "ts": 8_400})
    state.feed_event({"instance": "c", "event": "heartbeat", "model_version": None, "ts": 10_000})
    shown = {r["instance"]: r["status"] for r in replicas_of(state, heartbeat_s=0.5, now=10_000)}
    assert shown == {"a": "serving", "b": "gone", "c": "idle"}
    at_the_edge = replicas_of(state, heartbeat_s=0.5, now=9_900)
    assert [r["status"] for r in at_the_edge] == ["serving", "serving", "idle"]


def test_only_alerts_whose_last_event_fires_are_shown() -> None:
    def alert(alert_id: str, state: str, ts: int) -> dict[str, object]:
        return {"alert_id": alert_id, "state": state, "ts": ts}

    records = [
        alert("x", "firing", 1),
        alert("y", "firing", 2),
        alert("x", "resolved", 3),
        alert("z", "firing", 0),
    ]
    assert [a["alert_id"] for a in firing_alerts(records)] == ["z", "y"]
