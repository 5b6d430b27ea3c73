"""A version whose model raises on every request, on the real broker: a replica dead-letters each request
with the version's name, the monitor's error rate rule fires and rolls it back, and the previous version
serves again. It states within how many requests that happens."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from services.deployment.commands import make, publish, read_history
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from streams.rollback import ISSUER
from tests.integration.failing_model import FailingRecommender
from tests.integration.monitor_support import MonitorProcess, read_events, topic_world, write_config
from tests.integration.serving_support import Collector, Replica, encoded, produce, requests_of, wait_for

#: The repository root: the replica imports the failing model's class from it.
ROOT = Path(__file__).resolve().parents[2]
MONITOR = {
    "label_window_s": 1.0,
    "count_window": 40,
    "time_window_s": 30,
    "emit_every_n": 20,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.3,
    "session_timeout_s": 6,
    "rollback_cooldown_s": 0,
}
MIN_SAMPLES = 20
RULE = {"name": "errors", "metric": "error_rate", "above": 0.5, "min_samples": MIN_SAMPLES, "for": 1,
        "severity": "critical", "action": "rollback"}  # fmt: skip
RATE = 50.0  # requests/s
#: The bound stated: the rule needs MIN_SAMPLES failures, then a tick (1 s), the decision, and the replica's
#: swap; at RATE requests/s, ten seconds of that path on a loaded machine is 500 more.
BOUND = MIN_SAMPLES + int(10 * RATE)


def test_a_version_that_raises_on_every_request_is_rolled_back_and_the_previous_one_serves_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    world = World.generate(11, n_users=400, n_items=150)
    good = Recommender(n_components=4).fit(world.interactions(3000, seed=1))
    with topic_world(kafka_bootstrap, 6) as settings:
        registry = Registry(settings.registry)
        v1 = registry.register(good, metrics={}, data_summary={}).version
        v2 = registry.register(FailingRecommender(), metrics={}, data_summary={}).version
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "MODELWATCH_BOOTSTRAP": settings.bootstrap_servers,
            "MODELWATCH_TOPIC_PREFIX": settings.topic_prefix,
        }
        collector = Collector(settings)
        replica = Replica("serve-e", tmp_path, env=env)
        monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, [RULE]), tmp_path)
        stop = threading.Event()
        sender = threading.Thread(
            target=produce,
            args=(settings, encoded(requests_of(world, 6000, seed=5, tag="e"))),
            kwargs={"rate_per_s": RATE, "stop": stop},
            daemon=True,
        )
        try:
            publish(settings, make("deploy", v1, "release", issued_by="test"))
            wait_for(lambda: collector.events("activated"), 60, "the replica to serve the good version")
            monitor.start()
            bad = make("deploy", v2, "a version that cannot score", issued_by="test")
            publish(settings, bad)
            wait_for(
                lambda: any(e["model_version"] == v2 for e in collector.events("activated")),
                60,
                "the replica to serve the failing version",
            )
            sender.start()
            history = wait_for(
                lambda: (h := read_history(settings)).active_version == v1 and h, 90, "the rollback to v1"
            )
            rollback = history.applied[-1]
            wait_for(
                lambda: any(
                    p["model_version"] == v1 and p["ts"] > rollback["ts"] for p in collector.predictions()
                ),
                60,
                "the good version to answer again",
            )
        finally:
            stop.set()
            if sender.is_alive():
                sender.join(60)
            monitor.stop()
            replica.close()

        failed = {d["payload"] for d in collector.dead() if d.get("model_version") == v2}
        answered_by_v2 = [p for p in collector.predictions() if p["model_version"] == v2]
        collector.close()
        print(f"requests failed by {v2} before the rollback took effect: {len(failed)} (bound {BOUND})")
        assert not answered_by_v2 and MIN_SAMPLES <= len(failed) <= BOUND
        assert all(d["error"].startswith("model: RuntimeError") for d in collector.dead())

        [firing] = [a for a in read_events(settings, "alerts", "alert") if a["state"] == "firing"]
        assert (firing["rule"], firing["model_version"], firing["metric"], firing["value"]) == (
            "errors",
            v2,
            "error_rate",
            1.0,
        )
        assert (rollback["action"], rollback["issued_by"], rollback["alert_id"]) == (
            "rollback",
            ISSUER,
            firing["alert_id"],
        )
        rollbacks = [
            c for c in read_events(settings, "model-commands", "model-command") if c["action"] == "rollback"
        ]
        assert len(rollbacks) == 1
