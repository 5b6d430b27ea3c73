"""SIGKILL of the monitor mid-stream while a rollback is pending, and again after it happened.

A bad version is deployed over a good one; the monitor is killed while it counts the bad version's stream,
before the rollback rule has enough samples to fire. After the restart its tables are restored (the
version's totals go on from where they were), the alert fires once and the rollback is ordered once. A
second kill, after the rollback, repeats neither.

(Windows checked against scikit-learn after a kill, and an alert that fired before the kill, are the
monitor suite's own test: tests/integration/test_monitor_restart.py.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.config import Settings
from services.deployment.commands import make, publish, read_history
from tests.faults.conftest import FaultRow
from tests.faults.support import KEY
from tests.integration.monitor_support import (
    MonitorProcess,
    Storefront,
    read_events,
    topic_world,
    traffic,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.faults

PARTITIONS = 3
W = 1000  # label window, ms
N = 1500  # count window and the rule's min_samples: the alert cannot fire before 1,500 labelled requests
BATCH = 200
MONITOR = {
    "label_window_s": W / 1000,
    "count_window": N,
    "time_window_s": 5,
    "emit_every_n": 50,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.5,
    "session_timeout_s": 6,
    "batch_size": BATCH,
    "rollback_cooldown_s": 300,
}
RULE = {"name": "f1-rollback", "metric": "f1", "below": 0.3, "resolve_above": 0.5, "min_samples": N,
        "for": 2, "severity": "critical", "action": "rollback"}  # fmt: skip


class Shop:
    """Predictions and outcomes of one version at a time, in event-time order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storefront = Storefront(settings)
        self.next_ts = int(time.time() * 1000)
        self.sent: dict[str, int] = {}
        self.request_ids: dict[str, set[str]] = {}

    def serve(
        self, version: str, n: int, seed: int, exact: tuple[int, int], rate: float | None = None
    ) -> None:
        """``n`` requests served by ``version`` and their outcomes, at ``rate`` per second if given (so that
        a kill lands while the stream still flows, whatever the monitor's speed)."""
        reqs = traffic(version, n, seed=seed, t0=self.next_ts, step_ms=10, hit=0, miss=0, exact=exact)
        tick = reqs[-1].ts + 2 * W
        self.next_ts = tick + 1
        self.sent[version] = self.sent.get(version, 0) + n
        self.request_ids.setdefault(version, set()).update(r.request_id for r in reqs)
        started, step = time.monotonic(), 100
        for i in range(0, n, step):
            chunk = reqs[i : i + step]
            self.storefront.predictions(chunk)
            self.storefront.outcomes(chunk)
            if rate is not None:
                ahead = (i + step) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the workload, not waiting for a result
        self.storefront.tick(tick, PARTITIONS)  # moves every partition's label clock past the last request

    def serve_in_background(self, *args: Any, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(target=self.serve, args=args, kwargs=kwargs)
        thread.start()
        return thread

    def deploy(self, version: str) -> None:
        publish(self.settings, make("deploy", version, "release", key=KEY, issued_by="fault-suite"))


def metrics_of(settings: Settings, version: str) -> list[dict[str, Any]]:
    return [m for m in read_events(settings, "metrics", "metrics") if m["model_version"] == version]


def total(settings: Settings, version: str) -> int:
    return max((m["total"] for m in metrics_of(settings, version)), default=0)


def alerts_of(settings: Settings, version: str) -> list[dict[str, Any]]:
    return [a for a in read_events(settings, "alerts", "alert") if a["model_version"] == version]


def rollbacks(settings: Settings) -> list[dict[str, Any]]:
    return [c for c in read_events(settings, "model-commands", "model-command") if c["action"] == "rollback"]


def test_sigkill_of_the_monitor_with_a_rollback_pending(
    kafka_bootstrap: str, tmp_path: Path, fault: FaultRow
) -> None:
    """SIGKILL of the monitor mid-stream with a rollback pending, restart; then again after the rollback."""
    with topic_world(kafka_bootstrap, PARTITIONS) as plain:
        settings = plain.model_copy(update={"signing_key": SecretStr(KEY)})
        config = write_config(tmp_path / "monitor.toml", MONITOR, [RULE])
        monitor = MonitorProcess(settings, config, tmp_path, {"MODELWATCH_SIGNING_KEY": KEY})
        shop = Shop(settings)
        monitor.start()
        try:
            shop.deploy("v1")
            shop.serve("v1", 300, seed=1, exact=(2, 0))  # healthy: F1 1.0
            wait_for(lambda: total(settings, "v1") == 300, 60, "v1 counted", every=0.2)
            shop.deploy("v2")
            stream = shop.serve_in_background("v2", 4000, seed=2, exact=(0, 1), rate=800)  # bad: F1 0.0

            # Kill 1: mid-stream, with the bad version's rollback pending (too few samples to fire yet).
            wait_for(lambda: total(settings, "v2") >= 300, 60, "v2 partly counted", every=0.05)
            monitor.kill()
            killed_total = total(settings, "v2")
            fired_before = alerts_of(settings, "v2")
            stream.join(60)
            monitor.start()
            history = wait_for(
                lambda: (h := read_history(settings)).active_version == "v1" and h, 90, "the rollback"
            )
            wait_for(lambda: total(settings, "v2") == 4000, 90, "all of v2 counted", every=0.2)
            after_restart = metrics_of(settings, "v2")

            # Kill 2: after the alert and the rollback, while more of v2's late traffic is counted.
            stream = shop.serve_in_background("v2", 2000, seed=3, exact=(0, 1), rate=800)
            wait_for(lambda: total(settings, "v2") >= 4300, 60, "the late traffic partly counted", every=0.05)
            monitor.kill()
            second_kill = total(settings, "v2")
            stream.join(60)
            monitor.start()
            wait_for(lambda: total(settings, "v2") == 6000, 90, "all late traffic counted", every=0.2)
        finally:
            monitor.stop()

        totals = {v: total(settings, v) for v in ("v1", "v2")}
        firing = [a for a in alerts_of(settings, "v2") if a["state"] == "firing"]
        ordered = rollbacks(settings)
        history = read_history(settings)
        sent = sum(shop.sent.values())
        counted = sum(totals.values())
        once = len(ordered) == 1 and history.active_version == "v1"
        fault.measured(sent, min(counted, sent), max(counted - sent, 0), control_loop_ok=once)
        fault.note(f"killed at v2 total {killed_total:,} (rule needs {N:,}), again at {second_kill:,}")
        fault.note(f"alerts firing {len(firing)}, rollback commands {len(ordered)}")

        # The kill really left the rollback pending: nothing had fired yet.
        assert killed_total < N and not fired_before
        assert second_kill < 6000  # and the second kill, too, came mid-stream
        # Guards the windows table's changelog: the count goes on from where it was, none counted twice
        # or lost (a lost table restarts the totals at the committed offsets; a replay double-counts).
        count_events = [
            m for m in after_restart if m["window"]["kind"] == "count" and m["total"] > killed_total
        ]
        assert (
            count_events[0]["n"] == min(count_events[0]["total"], N)
            and count_events[0]["n"] > killed_total - BATCH
        )
        assert totals == {"v1": 300, "v2": 6000}
        # Guards the alert state kept in the table: fired once, not again after either restart.
        assert len(firing) == 1 and len({a["alert_id"] for a in alerts_of(settings, "v2")}) == 1
        # Guards the rollback policy's state (command sent before the state that says so; id derived from
        # the alert): exactly one rollback command on the topic, to the healthy version.
        assert [(c["model_version"], c["alert_id"]) for c in ordered] == [("v1", firing[0]["alert_id"])]
        assert [(c["action"], c["model_version"]) for c in history.applied] == [
            ("deploy", "v1"),
            ("deploy", "v2"),
            ("rollback", "v1"),
        ]
        assert not history.ignored  # every command on the topic is validly signed
