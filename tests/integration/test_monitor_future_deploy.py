"""A monitor's rollback after a deploy stamped in the future is obeyed (issue 13), on the real broker with
real replicas and a real monitor.

An operator whose clock runs ten minutes ahead deploys a bad version; the monitor, with a right clock,
judges it and orders the rollback. Its command's ``ts`` is earlier than the deploy's, but commands are
ordered by their offset on the one-partition command log: every replica obeys it, and the history shows it
in force. (The CLI's rollback after such a deploy: tests/integration/test_command_log.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.config import Settings
from services.deployment import commands
from services.deployment.commands import read_history
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from streams.rollback import ISSUER
from tests.integration.monitor_support import (
    ROLLBACK_MONITOR,
    ROLLBACK_RULE,
    ROLLBACK_WINDOW_MS,
    MonitorProcess,
    Storefront,
    traffic,
    write_config,
)
from tests.integration.serving_support import Collector, Replica, wait_for

PARTITIONS = 6  # the settings fixture's topics
W = ROLLBACK_WINDOW_MS
AHEAD_MS = 600_000  # the operator's clock: ten minutes ahead
MONITOR, RULE = {**ROLLBACK_MONITOR, "rollback_cooldown_s": 1}, ROLLBACK_RULE
REPLICAS = ("serve-a", "serve-b")


def answered_by_all(collector: Collector, command: dict[str, Any], event: str) -> bool:
    return all(
        any(e.get("command_id") == command["command_id"] for e in collector.events(event, name))
        for name in REPLICAS
    )


def test_the_monitors_rollback_after_a_deploy_stamped_ten_minutes_ahead_is_obeyed(
    settings: Settings, collector: Collector, replicas: Callable[[str], Replica], tmp_path: Path
) -> None:
    world = World.generate(11, n_users=400, n_items=150)
    model = Recommender(n_components=4).fit(world.interactions(3000, seed=1))
    registry = Registry(settings.registry)
    v1, v2 = (registry.register(model, metrics={}, data_summary={}).version for _ in range(2))
    for name in REPLICAS:
        replicas(name)
    deploy = commands.make("deploy", v1, "release", issued_by="ci")
    commands.publish(settings, deploy)
    wait_for(lambda: answered_by_all(collector, deploy, "activated"), 90, f"both replicas on {v1}")
    monitor = MonitorProcess(settings, write_config(tmp_path / "monitor.toml", MONITOR, [RULE]), tmp_path)
    monitor.start()
    try:
        ahead = commands.make(
            "deploy", v2, "from a laptop whose clock is ahead", issued_by="cli:laptop",
            ts=int(time.time() * 1000) + AHEAD_MS,
        )  # fmt: skip
        commands.publish(settings, ahead)
        wait_for(lambda: answered_by_all(collector, ahead, "activated"), 60, f"both replicas on {v2}")

        # v2 turns out bad: every request buys only what was not recommended (F1 0).
        reqs = traffic(v2, 120, seed=4, t0=int(time.time() * 1000), step_ms=10, hit=0, miss=0, exact=(0, 1))
        storefront = Storefront(settings)
        storefront.predictions(reqs)
        storefront.outcomes(reqs)
        storefront.tick(reqs[-1].ts + 2 * W, PARTITIONS)
        rollback = wait_for(
            lambda: (a := read_history(settings).applied)[-1]["action"] == "rollback" and a[-1],
            90,
            "the monitor's rollback",
        )
        wait_for(lambda: answered_by_all(collector, rollback, "activated"), 60, "both replicas to obey it")
    finally:
        monitor.stop()

    assert rollback["issued_by"] == ISSUER and rollback["model_version"] == v1 and rollback.get("alert_id")
    assert rollback["ts"] < ahead["ts"]  # stamped before the deploy it overrides: the offset decides
    assert not collector.events("rejected")
    history = read_history(settings)
    assert history.active_version == v1
    assert [(c["action"], c["model_version"]) for c in history.applied] == [
        ("deploy", v1),
        ("deploy", v2),
        ("rollback", v1),
    ]
