"""The Alertmanager side of :class:`streams.app.Monitor`: with ``[alertmanager] url`` set, every alert
transition the monitor sends on ``rec.alerts`` is handed, once the broker has it, to
:class:`streams.alertmanager.AlertSender`, and a timer tells the sender which alerts fire now on this
worker's versions (after a restart or a rebalance too), so it re-sends them while they fire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import faust

from services.config import Settings
from streams.activations import METRIC as ACTIVATION_METRIC
from streams.activations import RULE as ACTIVATION_RULE
from streams.alertmanager import AlertSender, alert_of
from streams.alerts import Baseline, RegistryBaselines
from streams.tracker import VersionTracker
from streams.watch import Watch

#: How often the sender learns which alerts fire now (it re-sends them every ``resend_s``).
FIRING_EVERY_S = 5.0


class AlertmanagerAgents:
    """Mixed into :class:`streams.app.Monitor`, which sets these attributes up."""

    settings: Settings
    app: faust.App
    watching: Watch
    baselines: RegistryBaselines
    published: set[tuple[str, str]] | None
    _owned: set[int]
    alert_sender: AlertSender | None = None

    def _install_alertmanager(self) -> None:
        am = self.settings.alertmanager
        if am.url is None:
            return
        self.alert_sender = AlertSender(
            am.url, resend_s=am.resend_s, timeout_s=am.timeout_s, retry_max_s=am.retry_max_s
        )
        self.app.task(self._start_alert_sender)
        self.app.timer(min(FIRING_EVERY_S, am.resend_s), name=f"{self.app.conf.id}.alertmanager")(
            self.alerts_firing_now
        )

    async def _start_alert_sender(self) -> None:
        assert self.alert_sender is not None
        self.alert_sender.start()

    async def _close_alert_sender(self) -> None:
        """At shutdown: what is pending (a resolution above all) is posted once more, off the event loop."""
        if self.alert_sender is not None:
            await asyncio.to_thread(self.alert_sender.close)

    def _notify(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Alert events now on the alert topic (acknowledged by the broker): to Alertmanager too."""
        if self.alert_sender is not None:
            for alert in alerts:
                self.alert_sender.transition(alert, self.settings.model_name)

    async def alerts_firing_now(self, *_: Any) -> None:
        if self.alert_sender is None or self.published is None:
            return  # not started yet: nothing is known to fire
        activations: list[str] = []
        if 0 in self._owned:  # the owner of labelled partition 0 sends the rejected-activation alerts
            activations = [
                aid
                for aid, state in self.published
                if state == "firing"
                and aid.startswith(f"{ACTIVATION_RULE}:")
                and (aid, "resolved") not in self.published
            ]
        events = firing_events(self.watching.trackers.values(), activations, self.baselines)
        now, model = time.time(), self.settings.model_name
        self.alert_sender.firing_now(alert_of(event, model, now) for event in events)


def firing_events(
    trackers: Iterable[VersionTracker], activations: Iterable[str], baseline: Baseline
) -> list[dict[str, Any]]:
    """Alert events (as on the alert topic) of every alert firing now: the rules and drift warnings of
    ``trackers``, and the rejected-activation alerts whose ids are ``activations``."""
    out: list[dict[str, Any]] = []
    for tracker in trackers:
        rules = {r.name: r for r in tracker.config.rules}
        ts = tracker.time.max_ts or 0
        for action in ("notify", "rollback"):
            for alert in tracker.firing_alerts(action, baseline):
                rule = rules[alert["rule"]]
                out.append({**alert, "state": "firing", "severity": rule.severity, "action": action, "ts": ts,
                            "window": rule.window})  # fmt: skip
        drift = tracker.drift
        if drift is not None and drift.state.firing and drift.state.alert_id is not None:
            out.append({"alert_id": drift.state.alert_id, "rule": drift.RULE,
                        "model_version": tracker.version, "metric": "error_rate",
                        "value": drift.adwin.estimation, "threshold": 0.0, "ts": ts, "state": "firing",
                        "severity": "warning", "action": "notify"})  # fmt: skip
    for aid in activations:
        version = aid[len(ACTIVATION_RULE) + 1 :].rpartition(":")[0]
        out.append({"alert_id": aid, "rule": ACTIVATION_RULE, "model_version": version,
                    "metric": ACTIVATION_METRIC, "value": None, "threshold": 0.0, "ts": 0, "state": "firing",
                    "severity": "warning", "action": "notify"})  # fmt: skip
    return out
