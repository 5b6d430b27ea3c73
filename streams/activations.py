"""Rejected activations: an alert while replicas refuse to load the commanded version.

A deploy whose version fails to load on some replicas (missing, tampered, unpicklable) leaves them on the
old version: the fleet serves something other than what was commanded, and only the replicas' ``rejected``
events on ``rec.model-events`` say so (:mod:`streams.fleet`). The monitor turns that into an alert on the
alert topic, rule :data:`RULE`, naming the replicas and their reasons:

- it fires while the commanded version has replicas that rejected it and not every live replica serves it;
- it resolves when that version is no longer commanded (``cause`` ``not_commanded``) or every live replica
  has activated it (``cause`` ``activated``).

Its ``alert_id`` is derived from the version and the command that commanded it (the deployment epoch), so
a deploy of the same version later is a new incident, and the alert topic itself is the state: a transition
already on it (read at start, :func:`streams.history.published_alerts`) is never sent again, so a restarted
monitor neither repeats a firing alert nor forgets to resolve one.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from streams.epochs import epoch_token, epochs
from streams.fleet import Fleet

RULE = "activation-rejected"
METRIC = "rejected_replicas"  # the alert's value: how many replicas rejected the version
MESSAGE_MAX = 2000  # the alert schema's limit


def alert_id(version: str, command_id: str) -> str:
    return f"{RULE}:{version}:{epoch_token(command_id)}"


def _event(aid: str, state: str, version: str, value: int, ts: int, message: str) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "rule": RULE,
        "state": state,
        "model_version": version,
        "metric": METRIC,
        "value": float(value),
        "threshold": 0.0,  # any replica rejecting it is one too many
        "ts": ts,
        "severity": "warning",
        "action": "notify",  # the old version still serves: nothing to roll back
        "message": message[:MESSAGE_MAX],
    }


def evaluate(fleet: Fleet | None, published: Set[tuple[str, str]], now_ms: int) -> list[dict[str, Any]]:
    """The activation alerts' transitions to send now, given the (alert_id, state) pairs on the alert topic.

    ``now_ms`` is the monitor's clock: no storefront event stands behind these alerts, and the replicas'
    rejections are stamped by their own clocks, which may disagree with each other.
    """
    if fleet is None:
        return []  # the deployment state is still being read: decided at a later evaluation
    out = []
    commanded = epochs(fleet.applied).commanded
    wanted: str | None = None
    if commanded is not None:
        version = commanded.version
        rejected = fleet.rejected.get(version, {})
        everywhere = bool(fleet.serving) and all(v == version for v in fleet.serving.values())
        if rejected and not everywhere:
            wanted = alert_id(version, commanded.command_id)
            if (wanted, "firing") not in published:
                reasons = "; ".join(f"{replica}: {why}" for replica, why in rejected.items())
                served = f"the fleet serves {fleet.served}" if fleet.served else "no replica serves a model"
                message = (
                    f"{version} was rejected by {len(rejected)} replica(s) ({', '.join(rejected)}); "
                    f"{served}. {reasons}"
                )
                out.append(_event(wanted, "firing", version, len(rejected), now_ms, message))
    for aid in sorted(_open(published) - {wanted}):
        version = aid[len(RULE) + 1 :].rpartition(":")[0]
        if (
            commanded is not None
            and commanded.version == version
            and alert_id(version, commanded.command_id) == aid
        ):
            why, cause = f"every live replica serves {version}", "activated"
        else:
            now = commanded.version if commanded is not None else "nothing"
            why, cause = f"{version} is no longer commanded ({now} is)", "not_commanded"
        event = _event(aid, "resolved", version, 0, now_ms, f"{RULE} on {version} ends: {why}")
        out.append({**event, "cause": cause})
    return out


def _open(published: Set[tuple[str, str]]) -> set[str]:
    """Activation alerts fired and not resolved, as the alert topic (and this run) says."""
    return {
        aid
        for aid, state in published
        if state == "firing" and aid.startswith(f"{RULE}:") and (aid, "resolved") not in published
    }
