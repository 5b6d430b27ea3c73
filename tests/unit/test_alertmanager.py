"""What the monitor tells Alertmanager: labels, annotations and times of its alerts (the posting itself is
tested against the real Alertmanager in tests/integration/test_monitor_alertmanager.py)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.config import AlertRule
from services.sandbox.processes import wait_for
from streams.alertmanager import Alert, AlertSender, alert_of, rollback_decided
from streams.alertmanager_agents import firing_events
from streams.alerts import AlertState, no_baseline
from streams.tracker import TrackerConfig, VersionTracker

FIRING = {
    "alert_id": "f1-low:v2:e0123abcd:40",
    "rule": "f1-low",
    "state": "firing",
    "model_version": "v2",
    "metric": "f1",
    "value": 0.1234567,
    "threshold": 0.3,
    "ts": 1795491753129,
    "severity": "critical",
    "action": "rollback",
    "message": "f1 on the count window of v2 is 0.1235, below 0.3000 for 1 evaluation(s) (n=40); "
    "rolling back to v1 (command c-1)",
    "window": "count",
}


def test_labels_identify_the_alert_and_annotations_explain_it() -> None:
    alert = alert_of(FIRING, "recommender", now=1000.0)
    assert alert.labels == {"alertname": "f1-low", "model": "recommender", "model_version": "v2",
                            "severity": "critical"}  # fmt: skip
    assert alert.annotations["value"] == "0.1235" and alert.annotations["threshold"] == "0.3000"
    assert alert.annotations["rollback"] == "rolling back to v1 (command c-1)"
    assert alert.annotations["alert_id"] == FIRING["alert_id"]
    assert alert.annotations["event_time_ms"] == "1795491753129"  # the storefront's clock: a note only
    payload = alert.payload(now=1060.0, resend_s=60)
    assert payload["startsAt"] == "1970-01-01T00:16:40.000Z"  # the monitor's clock when it fired
    assert payload["endsAt"] == "1970-01-01T00:21:40.000Z"  # four re-sends ahead of now


def test_the_rollback_annotation_says_what_was_decided() -> None:
    assert rollback_decided({**FIRING, "action": "notify"}) == "none: the rule notifies only"
    assert rollback_decided({**FIRING, "state": "resolved"}) == "none: resolved"
    assert rollback_decided({**FIRING, "message": "f1 is low"}).startswith("as decided when it fired")
    assert rollback_decided({**FIRING, "value": None}) == "rolling back to v1 (command c-1)"


def test_a_resolution_keeps_the_start_and_ends_now_and_the_firing_set_follows_the_worker() -> None:
    clock = [1000.0]
    sender = AlertSender("http://alertmanager:9093/", clock=lambda: clock[0])
    assert sender.endpoint == "http://alertmanager:9093/api/v2/alerts"
    sender.transition(FIRING, "recommender")
    sender._take_inbox()
    assert list(sender._state.firing) == [FIRING["alert_id"]]
    clock[0] = 1030.0
    sender.transition({**FIRING, "state": "resolved", "value": 0.6}, "recommender")
    sender._take_inbox()
    assert sender._state.firing == {}
    [resolved] = sender._state.resolved
    assert (resolved.starts_at, resolved.ends_at) == (1000.0, 1030.0)
    assert resolved.payload(2000.0, 60)["endsAt"] == "1970-01-01T00:17:10.000Z"  # now-ish, not ahead
    # The worker's firing alerts: one learnt after a restart comes in; one gone elsewhere goes.
    restored = Alert("other:v3:1", {"alertname": "other"}, {}, starts_at=1040.0)
    sender.firing_now([restored])
    sender._take_inbox()
    assert list(sender._state.firing) == ["other:v3:1"] and sender._state.changed


class Receiver:
    """A plain HTTP endpoint standing in for Alertmanager's POST /api/v2/alerts: what was posted, when."""

    def __init__(self, port: int) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_firing_alerts_are_re_sent_and_nothing_is_lost_while_the_receiver_is_down() -> None:
    port = free_port()
    sender = AlertSender(f"http://127.0.0.1:{port}", resend_s=0.3, timeout_s=1, retry_max_s=0.2)
    sender.start()
    receiver = None
    try:
        sender.transition(FIRING, "recommender")  # nobody listens yet: retried
        sender.transition({**FIRING, "alert_id": "f1-low:v3:1", "model_version": "v3"}, "recommender")
        sender.transition({**FIRING, "alert_id": "f1-low:v3:1", "model_version": "v3", "state": "resolved"},
                          "recommender")  # fmt: skip
        receiver = Receiver(port)
        wait_for(lambda: len(receiver.posts) >= 3, 10, "three posts")
        first = receiver.posts[0]
        # The resolution that came while it was down goes out first, then the alert still firing.
        assert [(a["labels"]["model_version"], a["endsAt"] >= a["startsAt"]) for a in first] == [
            ("v3", True), ("v2", True)
        ]  # fmt: skip
        # Re-sent while it fires, each time with endsAt moved ahead; the resolution only once.
        later = receiver.posts[2]
        assert [a["labels"]["model_version"] for a in later] == ["v2"]
        assert later[0]["endsAt"] > first[1]["endsAt"] and later[0]["startsAt"] == first[1]["startsAt"]
    finally:
        sender.stop()
        if receiver is not None:
            receiver.close()


def test_the_alerts_firing_now_cover_rules_drift_and_rejected_activations() -> None:
    rule = AlertRule(name="f1-low", metric="f1", below=0.3, severity="critical", action="rollback")
    tracker = VersionTracker("v2", TrackerConfig(rules=(rule,), drift_delta=0.002))
    assert firing_events([tracker], [], no_baseline) == []
    tracker.alerts["f1-low"] = AlertState(firing=True, alert_id="f1-low:v2:40")
    assert tracker.drift is not None
    tracker.drift.state = AlertState(firing=True, alert_id="drift:v2:55")
    events = firing_events([tracker], ["activation-rejected:v3:e0123abcd"], no_baseline)
    assert [(e["alert_id"], e["rule"], e["model_version"], e["severity"], e["action"]) for e in events] == [
        ("f1-low:v2:40", "f1-low", "v2", "critical", "rollback"),
        ("drift:v2:55", "drift", "v2", "warning", "notify"),
        ("activation-rejected:v3:e0123abcd", "activation-rejected", "v3", "warning", "notify"),
    ]
    alerts = [alert_of(e, "recommender", now=1.0) for e in events]  # each a valid alert for Alertmanager
    assert {a.labels["alertname"] for a in alerts} == {"f1-low", "drift", "activation-rejected"}


def test_a_resolution_pending_at_shutdown_is_posted_before_close_returns() -> None:
    """Alertmanager was down, the sender waits 30 s before its next attempt; it comes back and the monitor
    stops meanwhile: the resolution goes out at close, not never (Alertmanager would keep it firing)."""
    port = free_port()
    sender = AlertSender(
        f"http://127.0.0.1:{port}", resend_s=60, timeout_s=2, retry_max_s=60, first_retry_s=30
    )
    sender.start()
    receiver = None
    try:
        sender.transition(FIRING, "recommender")
        wait_for(lambda: sender.failed >= 1, 10, "the first attempt to fail")
        sender.transition({**FIRING, "state": "resolved"}, "recommender")
        receiver = Receiver(port)
        sender.close()
        assert [[(a["labels"]["model_version"], a["endsAt"] >= a["startsAt"]) for a in post]
                for post in receiver.posts] == [[("v2", True)]]  # fmt: skip
        assert sender.posted == 1 and not sender._thread.is_alive()
    finally:
        sender.stop()
        if receiver is not None:
            receiver.close()
