"""When a rollback rule fires, decide whether to roll back, and to which version.

The deployment history is the command topic (``History`` in ``services.deployment.commands``:
applied commands in order).
A rollback is ordered only when all of these hold:

- the alert is on the version that is active now (an old version's late predictions move nothing);
- no rollback was ordered within the cooldown (ours, or anyone's on the command topic);
- an earlier version is healthy: deployed before, not itself rolled back for an alert, and not firing a
  rollback rule now. The most recent such version is the target.

The command's id is derived from the alert's id, so a command sent again after a crash is applied once.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from services.deployment import commands

ISSUER = "modelwatch-monitor"


def command_id(alert_id: str) -> str:
    readable = f"rollback:{alert_id}"
    return readable if len(readable) <= 256 else f"rollback:{hashlib.sha256(alert_id.encode()).hexdigest()}"


@dataclass(frozen=True)
class Decision:
    command: dict[str, Any] | None  # the rollback command to publish, if any
    reason: str  # why (or why not), for the alert's message and the log


def rolled_back_for_alerts(applied: Sequence[dict[str, Any]]) -> set[str]:
    """Versions that were active when a rollback carrying an alert_id took them out."""
    out: set[str] = set()
    for before, command in itertools.pairwise(applied):
        if command["action"] == "rollback" and command.get("alert_id"):
            out.add(str(before["model_version"]))
    return out


class RollbackPolicy:
    def __init__(self, cooldown_ms: int, signing_key: str | None = None) -> None:
        self.cooldown_ms = cooldown_ms
        self.signing_key = signing_key
        self.last_ordered_ms: int | None = None  # our last command, before the topic shows it

    def decide(
        self,
        *,
        alert: dict[str, Any],
        applied: Sequence[dict[str, Any]],
        unhealthy: Collection[str],
        now_ms: int,
    ) -> Decision:
        """``alert`` is a firing event of a rollback rule; ``applied`` the history's applied commands;
        ``unhealthy`` the versions firing a rollback rule now."""
        version = alert["model_version"]
        active = applied[-1]["model_version"] if applied else None
        if active is None:
            return Decision(None, "no deployment on the command topic: nothing to roll back")
        if version != active:
            return Decision(None, f"{version} is not the active version ({active}): no rollback")
        last = max(
            [c["ts"] for c in applied if c["action"] == "rollback"]
            + ([self.last_ordered_ms] if self.last_ordered_ms is not None else []),
            default=None,
        )
        if last is not None and now_ms - last < self.cooldown_ms:
            wait_s = (last + self.cooldown_ms - now_ms) / 1000
            return Decision(None, f"rollback cooldown: another rollback is {wait_s:.0f}s too recent")
        excluded = rolled_back_for_alerts(applied)
        earlier = [c["model_version"] for c in reversed(applied) if c["model_version"] != active]
        if not earlier:
            return Decision(None, f"no earlier version than {version} to roll back to")
        target = next((v for v in earlier if v not in excluded and v not in unhealthy), None)
        if target is None:
            tried = ", ".join(dict.fromkeys(earlier))
            return Decision(None, f"no healthy earlier version to roll back to (tried {tried})")
        value, threshold = alert["value"], alert["threshold"]
        reason = (
            f"alert {alert['alert_id']}: {alert['metric']} {value:.4f} below {threshold:.4f} on {version}; "
            f"rolling back to {target}"
        )
        command = commands.make(
            "rollback",
            target,
            reason,
            key=self.signing_key,
            command_id=command_id(alert["alert_id"]),
            issued_by=ISSUER,
            alert_id=alert["alert_id"],
            ts=now_ms,
        )
        self.last_ordered_ms = now_ms
        return Decision(command, f"rolling back to {target} (command {command['command_id']})")
