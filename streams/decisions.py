"""What the monitor decides at each evaluation, beyond the alert rules: deployment epochs and rollbacks.

An evaluation is one batch of the watch agent or one tick of its timer. At each, the trackers follow the
deployment history (:mod:`streams.epochs`) and what the fleet serves (:mod:`streams.fleet`: the version
the live replicas acknowledged, not merely the last command): a version no longer served has its firing
alerts resolved with the reason and is no longer judged; a version deployed again starts afresh. Then
every firing alert of a rule with ``action = "rollback"`` on the version served is put to the rollback
policy (:mod:`streams.rollback`) again, not only at the moment it fires: a cooldown or a history not yet read
delays the rollback, it does not cancel it. The policy's deterministic command ids keep it to one
rollback per incident.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from streams.alerts import Baseline
from streams.epochs import epochs
from streams.fleet import Fleet
from streams.rollback import RollbackPolicy
from streams.tracker import Emission, VersionTracker

log = logging.getLogger("modelwatch.monitor")

HISTORY_UNREAD = (
    "no rollback yet: the deployment history is still being read (decided again at each evaluation)"
)


class Decisions:
    def __init__(self, policy: RollbackPolicy, baseline: Baseline) -> None:
        self.policy = policy
        self.baseline = baseline
        self._said: dict[str, str] = {}  # alert_id -> the last reason logged for it, numbers blanked

    def follow_epochs(
        self, trackers: Mapping[str, VersionTracker], fleet: Fleet | None
    ) -> list[tuple[VersionTracker, Emission]]:
        """Bring each tracker to its version's epoch in ``fleet``'s history; return the trackers changed,
        with the alert transitions that causes (nothing while the history is being read)."""
        if fleet is None:
            return []
        history = epochs(fleet.applied)
        out = []
        for version, tracker in trackers.items():
            latest = history.latest.get(version)
            if latest is None:
                continue  # never commanded (traffic without a deployment): judged as it comes
            if tracker.epoch is None:  # counted before the history said which deployment it is
                tracker.adopt_epoch(latest.command_id)
                out.append((tracker, Emission()))
            elif tracker.epoch != latest.command_id:
                why = f"{version} is deployed again (command {latest.command_id}): its windows start afresh"
                out.append((tracker, tracker.begin_epoch(latest.command_id, why, self.baseline)))
            # Retired when the fleet serves another version: a deploy no replica could load retires nobody.
            if fleet.served is not None and fleet.served != version and not tracker.retired:
                out.append(
                    (tracker, tracker.retire(history.describe_end(version, fleet.served), self.baseline))
                )
        return out

    def rollbacks(
        self,
        trackers: Mapping[str, VersionTracker],
        fleet: Fleet | None,
        announced: Sequence[dict[str, Any]],
        now_ms: int,
    ) -> list[dict[str, Any]]:
        """The rollback commands to publish now.

        ``fleet`` is the deployment state (``None`` while it is being read); ``announced`` the firing
        events of rollback rules this evaluation sends: their message gets the decision.
        """
        if fleet is None:
            for alert in announced:
                alert["message"] += f"; {HISTORY_UNREAD}"
            return []
        served = fleet.served
        unhealthy = {v for v, t in trackers.items() if t.firing("rollback") or t.left_firing}
        firing = {alert["alert_id"]: alert for alert in announced}
        tracker = trackers.get(served) if served is not None else None
        if tracker is not None:
            for alert in tracker.firing_alerts("rollback", self.baseline):
                firing.setdefault(alert["alert_id"], alert)
        out = []
        for aid, alert in firing.items():
            decision = self.policy.decide(alert=alert, fleet=fleet, unhealthy=unhealthy, now_ms=now_ms)
            if "message" in alert:
                alert["message"] += f"; {decision.reason}"
            said = re.sub(r"\d+", "#", decision.reason)  # a cooldown counting down is the same reason
            if self._said.get(aid) != said:
                self._said[aid] = said
                log.info("rollback decision on alert %s: %s", aid, decision.reason)
            if decision.command is not None:
                out.append(decision.command)
        return out
