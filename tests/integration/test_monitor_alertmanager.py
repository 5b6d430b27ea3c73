"""The real monitor posts its alerts to a real Alertmanager (Debian's prometheus-alertmanager 0.25): with
the labels and annotations ops teams route on, a bad deploy's alert within 5 s of the alert event and
resolved once the monitor's rollback resolves it, and without losing one while Alertmanager is down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from services import kafka
from services.config import Settings
from services.deployment.commands import make, publish
from tests.integration.monitor_support import (
    QUICK_MONITOR,
    QUICK_WINDOW_MS,
    MonitorProcess,
    Storefront,
    topic_world,
    traffic,
    wait_for,
    write_config,
)
from tests.integration.monitoring_support import Alertmanager, Webhook
from tests.integration.serving_support import free_port

PARTITIONS = 3
W = QUICK_WINDOW_MS  # label window, ms of event time
MONITOR = {**QUICK_MONITOR, "rollback_cooldown_s": 0}  # the bad deploy is rolled back at once
ALERTS = [{"name": "f1-low", "metric": "f1", "below": 0.3, "resolve_above": 0.5, "min_samples": 20,
           "severity": "critical", "action": "rollback"}]  # fmt: skip


def alert_events(settings: Settings) -> list[tuple[dict[str, Any], int]]:
    """The alert events on the topic with their message timestamps (the monitor's clock, ms)."""
    topic = settings.topic("alerts")
    return [(orjson.loads(v), ts) for _, v, ts in kafka.read_topic(settings, topic) if v is not None]


def play(settings: Settings, version: str, n: int, seed: int, exact: tuple[int, int], t0: int) -> int:
    """``n`` requests of ``version`` whose windows all have the same F1 (0 with (0, 1)); returns the next
    free event time."""
    reqs = traffic(version, n, seed=seed, t0=t0, step_ms=10, hit=0, miss=0, exact=exact)
    storefront = Storefront(settings)
    storefront.predictions(reqs)
    storefront.outcomes(reqs)
    end = max(r.ts for r in reqs) + 3 * W
    storefront.tick(end, PARTITIONS)
    return end + 1


def in_alertmanager(am: Alertmanager, version: str) -> dict[str, Any] | None:
    return next((a for a in am.alerts() if a["labels"].get("model_version") == version), None)


def test_alerts_reach_a_real_alertmanager_even_one_started_late(kafka_bootstrap: str, tmp_path: Path) -> None:
    webhook = Webhook(free_port())
    am = Alertmanager(free_port(), tmp_path, webhook)
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        config = write_config(tmp_path / "monitor.toml", MONITOR, ALERTS)
        env = {
            "MODELWATCH_ALERTMANAGER__URL": am.url,
            "MODELWATCH_ALERTMANAGER__RETRY_MAX_S": "2",  # the test waits for the retry after the start
            "MODELWATCH_ALERTMANAGER__RESEND_S": "60",  # endsAt 4 min ahead: only a resolution ends it here
        }
        monitor = MonitorProcess(settings, config, tmp_path, env)
        try:
            monitor.start()
            # 1. Alertmanager is down when the first alert fires: the monitor keeps it and retries.
            t = play(settings, "am-1", 60, seed=41, exact=(0, 1), t0=int(time.time() * 1000))

            def fired(version: str) -> tuple[dict[str, Any], int] | None:
                return next(
                    ((a, ts) for a, ts in alert_events(settings)
                     if a["model_version"] == version and a["state"] == "firing"), None
                )  # fmt: skip

            first, _ = wait_for(lambda: fired("am-1"), 60, "am-1's alert on the topic", every=0.5)
            wait_for(lambda: "alertmanager unreachable" in monitor.log(), 30, "a failed post to be retried")
            assert monitor.proc is not None and monitor.proc.poll() is None  # the stream goes on
            am.start()
            got = wait_for(lambda: in_alertmanager(am, "am-1"), 30, "am-1's alert in Alertmanager", every=0.3)
            assert got["labels"] == {
                "alertname": "f1-low",
                "model": settings.model_name,
                "model_version": "am-1",
                "severity": "critical",
            }
            notes = got["annotations"]
            assert notes["alert_id"] == first["alert_id"] and notes["metric"] == "f1"
            assert (notes["value"], notes["threshold"]) == ("0.0000", "0.3000")
            # No version was ever deployed: the monitor decided it had nothing to roll back, and says so.
            assert notes["rollback"] and notes["rollback"] in first["message"]
            assert got["status"]["state"] == "active"

            # 2. Alertmanager up: a good deploy, then a bad one. Its alert is there within 5 s of the alert
            # event on the topic, saying the monitor rolls back to the good version.
            publish(settings, make("deploy", "am-good", "release"))
            publish(settings, make("deploy", "am-bad", "release"))
            t = play(settings, "am-bad", 60, seed=42, exact=(0, 1), t0=t)
            second, produced_ms = wait_for(
                lambda: fired("am-bad"), 60, "am-bad's alert on the topic", every=0.5
            )
            # Alertmanager took it and notified the receiver (the rollback may resolve it within a second,
            # so its list of active alerts is no witness: the notification is).
            notified_at, got = wait_for(
                lambda: webhook.notified("am-bad", "firing"), 10, "am-bad's firing notification", every=0.2
            )
            delay_s = notified_at - produced_ms / 1000
            print(
                f"alert event {second['alert_id']} notified by Alertmanager {delay_s:.3f} s after its event"
            )
            assert delay_s < 5.0
            assert got["labels"] == {"alertname": "f1-low", "model": settings.model_name,
                                     "model_version": "am-bad", "severity": "critical"}  # fmt: skip
            assert got["annotations"]["alert_id"] == second["alert_id"]
            assert got["annotations"]["rollback"].startswith("rolling back to am-good (command ")

            # 3. The rollback takes am-bad out of service: its alert resolves on the topic, and Alertmanager
            # takes the resolution at once (not the endsAt 4 minutes ahead).
            def resolved() -> bool:
                return any(
                    a["model_version"] == "am-bad" and a["state"] == "resolved"
                    for a, _ in alert_events(settings)
                )

            wait_for(resolved, 60, "am-bad's alert to resolve on the topic", every=0.5)
            wait_for(lambda: webhook.notified("am-bad", "resolved"), 10, "am-bad's resolved notification")
            assert in_alertmanager(am, "am-bad") is None and am.received("resolved") >= 1
            assert (
                in_alertmanager(am, "am-1") is not None
            )  # never deployed, still firing: re-sent, not resolved
        finally:
            monitor.stop()
            am.stop()
            webhook.close()
