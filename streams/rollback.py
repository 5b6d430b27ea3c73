"""Whether to roll back a version with a firing rollback alert, and to which version.

The deployment state is a :class:`~streams.fleet.Fleet`: the applied commands in log order and what the
live replicas acknowledged. The policy is asked again at every evaluation of the monitor while a rule with
``action = "rollback"`` is firing on the version served, so an answer of "not now" is never final. A
rollback is ordered only when all of these hold:

- the alert is on the version the fleet serves now (an old version's late predictions move nothing), and
  some replica could load that version (one that none could was never served: no basis for a decision);
- no rollback of ours is still on its way to the command topic (one incident, one rollback, even when
  several rules fire at once);
- no rollback was ordered within the cooldown (ours, or anyone's on the command topic): the cooldown
  delays the decision, it does not veto it;
- an earlier version is healthy: deployed before, not itself rolled back for an alert, loaded by some
  replica (or by none yet asked), and not firing a rollback rule now. The most recent such version is the
  target.

The command's id is derived from the alert's id: once a command with that id is on the command topic, the
incident is settled, across restarts of the monitor, and a command sent again after a crash is applied
once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from services.deployment import commands
from services.registry.keys import Signer
from streams.fleet import Fleet

ISSUER = "modelwatch-monitor"
#: How long a rollback of ours may take to show on the command topic before it no longer holds the others.
IN_FLIGHT_MS = 30_000


def command_id(alert_id: str) -> str:
    readable = f"rollback:{alert_id}"
    return readable if len(readable) <= 256 else f"rollback:{hashlib.sha256(alert_id.encode()).hexdigest()}"


@dataclass(frozen=True)
class Decision:
    command: dict[str, Any] | None  # the rollback command to publish, if any
    reason: str  # why (or why not), for the alert's message and the log
    settled: bool = False  # the incident has its rollback: nothing more to decide


def describe(alert: dict[str, Any]) -> str:
    """``f1 0.1200 below 0.3000`` (or ``above``), from an alert event or a firing alert's summary."""
    value, threshold = alert.get("value"), alert.get("threshold")
    if value is None or threshold is None:
        return str(alert.get("metric", "the metric"))
    side = "above" if alert.get("direction") == "above" else "below"
    return f"{alert['metric']} {value:.4f} {side} {threshold:.4f}"


class RollbackPolicy:
    def __init__(
        self,
        cooldown_ms: int,
        signing_key: str | None = None,
        signer: Signer | None = None,
        model: str | None = None,
    ) -> None:
        self.cooldown_ms = cooldown_ms
        self.model = model  # the model whose versions this monitor rolls back (named in each command)
        self.signing_key = signing_key
        # The monitor's key (keys.monitor_key): replicas with a keyring obey only signed rollbacks.
        self.signer = signer
        self._ordered: dict[
            str, int
        ] = {}  # our commands -> when ordered (our clock), until the topic shows them
        # Rollbacks on the topic -> when this policy first read them (our clock). The cooldown runs from
        # the earlier of that and the command's own ts: an issuer's clock running ahead cannot stretch it.
        self._first_read: dict[str, int] = {}

    def decide(
        self,
        *,
        alert: dict[str, Any],
        fleet: Fleet,
        unhealthy: Collection[str],
        now_ms: int,
    ) -> Decision:
        """``alert`` is a firing alert of a rollback rule (its event, or a summary with alert_id,
        model_version, metric, value and threshold); ``fleet`` the deployment state; ``unhealthy`` the
        versions firing a rollback rule now."""
        applied, served = fleet.applied, fleet.served
        version = alert["model_version"]
        cid = command_id(alert["alert_id"])
        on_topic = {c["command_id"]: c for c in applied}
        for ordered in [c for c in self._ordered if c in on_topic]:
            del self._ordered[ordered]
        if cid in on_topic:  # ordered before (perhaps before a restart): not twice
            target = on_topic[cid]["model_version"]
            return Decision(None, f"rolled back to {target} (command {cid})", settled=True)
        if cid in self._ordered:
            return Decision(None, f"rollback ordered (command {cid})", settled=True)
        if version in fleet.unloadable:
            return Decision(None, f"no replica could load {version}: it was never served, no rollback")
        if served is None:
            return Decision(None, "no version served (none commanded, or none loaded): nothing to roll back")
        if version != served:
            return Decision(None, f"{version} is not the version served ({served}): no rollback")
        waiting = [c for c, at in self._ordered.items() if now_ms - at < IN_FLIGHT_MS]
        if waiting:
            return Decision(None, f"rollback {waiting[0]} is on its way to the command topic: waiting for it")
        last = self._last_rollback_ms(applied, now_ms)
        if last is not None and now_ms - last < self.cooldown_ms:
            wait_s = (last + self.cooldown_ms - now_ms) / 1000
            return Decision(None, f"rollback cooldown: decided again in {wait_s:.0f}s")
        excluded = fleet.rolled_back_for_alerts | fleet.unloadable
        earlier = [c["model_version"] for c in reversed(applied) if c["model_version"] != version]
        if not earlier:
            return Decision(None, f"no earlier version than {version} to roll back to")
        target = next((v for v in earlier if v not in excluded and v not in unhealthy), None)
        if target is None:
            tried = ", ".join(dict.fromkeys(earlier))
            return Decision(None, f"no healthy earlier version to roll back to (tried {tried})")
        reason = f"alert {alert['alert_id']}: {describe(alert)} on {version}; rolling back to {target}"
        command = commands.make(
            "rollback",
            target,
            reason,
            key=self.signing_key,
            signer=self.signer,
            command_id=cid,
            issued_by=ISSUER,
            alert_id=alert["alert_id"],
            ts=now_ms,
            model=self.model,
        )
        self._ordered[cid] = now_ms
        return Decision(command, f"rolling back to {target} (command {cid})", settled=True)

    def _last_rollback_ms(self, applied: Sequence[dict[str, Any]], now_ms: int) -> int | None:
        times = list(self._ordered.values())
        for c in applied:
            if c["action"] == "rollback":
                first = self._first_read.setdefault(c["command_id"], now_ms)
                times.append(min(int(c["ts"]), first))
        return max(times, default=None)
