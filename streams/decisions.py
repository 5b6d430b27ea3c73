"""What the monitor decides at each evaluation, beyond the alert rules: rollbacks.

An evaluation is one batch of the watch agent or one tick of its timer. At each, every firing alert of a
rule with ``action = "rollback"`` on the version served is put to the rollback policy
(:mod:`streams.rollback`) again, not only at the moment it fires: a cooldown or a history not yet read
delays the rollback, it does not cancel it. The policy's deterministic command ids keep it to one
rollback per incident.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from streams.alerts import Baseline
from streams.rollback import RollbackPolicy, served_version
from streams.tracker import VersionTracker

log = logging.getLogger("modelwatch.monitor")

HISTORY_UNREAD = (
    "no rollback yet: the deployment history is still being read (decided again at each evaluation)"
)


class Decisions:
    def __init__(self, policy: RollbackPolicy, baseline: Baseline) -> None:
        self.policy = policy
        self.baseline = baseline
        self._said: dict[str, str] = {}  # alert_id -> the last reason logged for it

    def rollbacks(
        self,
        trackers: Mapping[str, VersionTracker],
        applied: Sequence[dict[str, Any]] | None,
        announced: Sequence[dict[str, Any]],
        now_ms: int,
    ) -> list[dict[str, Any]]:
        """The rollback commands to publish now.

        ``applied`` is the deployment history (``None`` while it is being read); ``announced`` the firing
        events of rollback rules this evaluation sends: their message gets the decision.
        """
        if applied is None:
            for alert in announced:
                alert["message"] += f"; {HISTORY_UNREAD}"
            return []
        served = served_version(applied)
        unhealthy = {v for v, t in trackers.items() if t.firing("rollback")}
        firing = {alert["alert_id"]: alert for alert in announced}
        tracker = trackers.get(served) if served is not None else None
        if tracker is not None:
            for alert in tracker.firing_alerts("rollback", self.baseline):
                firing.setdefault(alert["alert_id"], alert)
        out = []
        for aid, alert in firing.items():
            decision = self.policy.decide(
                alert=alert, applied=applied, served=served, unhealthy=unhealthy, now_ms=now_ms
            )
            if "message" in alert:
                alert["message"] += f"; {decision.reason}"
            if self._said.get(aid) != decision.reason:
                self._said[aid] = decision.reason
                log.info("rollback decision on alert %s: %s", aid, decision.reason)
            if decision.command is not None:
                out.append(decision.command)
        return out
