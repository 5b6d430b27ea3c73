"""The monitor worker is killed with SIGKILL mid-stream and started again (this time with `faust -A
streams.app worker`): its windows continue where they were, nothing is counted twice or lost, and no
firing alert is repeated or lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.monitor_support import (
    QUICK_MONITOR,
    MonitorProcess,
    Req,
    Storefront,
    by_ts,
    check_against_sklearn,
    read_events,
    read_labelled,
    topic_world,
    traffic,
    wait_for,
    write_config,
)

PARTITIONS = 3
W = 1000
N = 40
BATCH = 200
MONITOR = {**QUICK_MONITOR, "label_window_s": W / 1000, "count_window": N, "emit_every_n": 25,
           "commit_interval_s": 1.0, "batch_size": BATCH}  # fmt: skip
RULE = {"name": "f1-low", "metric": "f1", "below": 0.3, "resolve_above": 0.5, "min_samples": 20, "for": 2}


def metrics_of(settings: Any, version: str) -> list[dict[str, Any]]:
    return [m for m in read_events(settings, "metrics", "metrics") if m["model_version"] == version]


def latest_total(settings: Any, version: str) -> int:
    events = metrics_of(settings, version)
    return events[-1]["total"] if events else 0


@pytest.mark.faults
def test_sigkill_mid_stream_then_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    with topic_world(kafka_bootstrap, PARTITIONS) as settings:
        monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, [RULE]), tmp_path)
        storefront = Storefront(settings)
        t0 = int(time.time() * 1000)
        phases: list[list[Req]] = []

        def serve(n: int, exact: tuple[int, int], seed: int, per_s: float | None = None) -> None:
            """``n`` requests with their outcomes; at ``per_s`` requests a second, as a live stream."""
            start = t0 + 10 * sum(len(p) for p in phases)
            reqs = traffic("k1", n, seed=seed, t0=start, step_ms=10, hit=0, miss=0, exact=exact)
            phases.append(reqs)
            step = 100 if per_s else n
            for i in range(0, n, step):
                storefront.predictions(reqs[i : i + step])
                storefront.outcomes(reqs[i : i + step])
                if per_s:
                    time.sleep(step / per_s)  # pacing the producer, not waiting for the monitor

        def live_stream() -> None:
            # A long bad stretch then a long good one, still flowing while the worker is killed and back.
            serve(3000, (0, 1), seed=3, per_s=800)
            serve(3000, (2, 0), seed=4, per_s=800)
            storefront.tick(phases[-1][-1].ts + 2 * W, PARTITIONS)

        monitor.start()
        try:
            serve(200, (2, 0), seed=1)  # good
            serve(200, (0, 1), seed=2)  # bad: f1-low fires
            wait_for(lambda: read_events(settings, "alerts", "alert"), 60, "the alert to fire", every=0.5)
            producer = threading.Thread(target=live_stream)
            producer.start()
            expected = 200 + 200 + 3000 + 3000
            wait_for(lambda: latest_total(settings, "k1") >= 1000, 60, "the stream to be counted", every=0.1)
            monitor.kill()
            before = metrics_of(settings, "k1")
            killed_at = before[-1]["total"]
            assert killed_at < expected - 2000, "the kill should land mid-stream"

            monitor.start(faust_cli=True)
            producer.join(timeout=60)
            wait_for(
                lambda: latest_total(settings, "k1") == expected, 90, f"all {expected} counted", every=0.5
            )
        finally:
            monitor.stop()
        assert "restored k1" in monitor.log()

        after = metrics_of(settings, "k1")[len(before) :]
        # n did not reset: the first count window after the restart is full, and its total goes on from
        # about where the killed worker was (less at most the batch whose state it had not yet written).
        count_events = [m for m in after if m["window"]["kind"] == "count"]
        assert count_events[0]["n"] == N and count_events[0]["total"] > killed_at - 2 * BATCH
        assert after[-1]["total"] == expected and after[-1]["expired"] == 0  # none lost, none counted twice

        # Still exact after the crash: every metrics event equals scikit-learn on its window.
        truth = {r.request_id: r for r in by_ts(*phases)}
        labelled = [e for e in read_labelled(settings) if e["model_version"] == "k1"]
        assert {e["request_id"] for e in labelled} == set(truth)
        check_against_sklearn(
            before + after, labelled, truth, label_window_ms=W, count_window=N, time_window_s=1
        )

        # The alert that fired before the kill did not fire again; its resolution after the restart came.
        alerts = [(a["alert_id"], a["state"]) for a in read_events(settings, "alerts", "alert")]
        # (the resolution went out long before the last metrics event, which was awaited above)
        assert [state for _, state in alerts] == ["firing", "resolved"]
        assert alerts[0][0] == alerts[1][0]
