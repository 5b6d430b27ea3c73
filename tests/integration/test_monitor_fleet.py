"""The monitor decides on what the fleet really serves, on the real broker with real replicas.

A version whose artifact fails to load on the replicas: they keep serving the old version, the history and
``models history`` say so, an alert says which replicas rejected it, and a later alert on the old version
can still roll it back (to the version before it: never to the one nobody could load); the rejection
alert ends when the broken version is no longer commanded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import main
from services.config import Settings
from services.deployment import commands
from services.deployment.follower import read_state
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
    read_events,
    traffic,
    write_config,
)
from tests.integration.serving_support import Collector, Replica, wait_for

PARTITIONS = 6  # the settings fixture's topics
W = ROLLBACK_WINDOW_MS
MONITOR, RULE = ROLLBACK_MONITOR, ROLLBACK_RULE
REPLICAS = ("serve-a", "serve-b")


@pytest.fixture
def model() -> Recommender:
    world = World.generate(11, n_users=400, n_items=150)
    return Recommender(n_components=4).fit(world.interactions(3000, seed=1))


@pytest.fixture
def monitor(settings: Settings, tmp_path: Path) -> Iterator[MonitorProcess]:
    workdir = tmp_path / "monitor"
    workdir.mkdir()
    process = MonitorProcess(settings, write_config(workdir / "monitor.toml", MONITOR, [RULE]), workdir)
    yield process
    process.stop()


def answered_by_all(collector: Collector, command: dict[str, Any], event: str) -> bool:
    return all(
        any(e.get("command_id") == command["command_id"] for e in collector.events(event, name))
        for name in REPLICAS
    )


def deploy_and_wait(settings: Settings, collector: Collector, version: str) -> dict[str, Any]:
    command = commands.make("deploy", version, "release", issued_by="ci")
    commands.publish(settings, command)
    wait_for(lambda: answered_by_all(collector, command, "activated"), 90, f"both replicas on {version}")
    return command


def rejections(settings: Settings, version: str) -> list[dict[str, Any]]:
    alerts = read_events(settings, "alerts", "alert")
    return [a for a in alerts if a["rule"] == "activation-rejected" and a["model_version"] == version]


def damage(settings: Settings, version: str) -> None:
    """The artifact is damaged after it was registered (a storage fault): the replicas' check refuses it."""
    artifact = Path(settings.registry, version, "model.joblib")
    artifact.chmod(0o644)
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))


def test_a_version_no_replica_can_load_leaves_the_old_one_served_judged_and_rolled_back(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[[str], Replica],
    monitor: MonitorProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = Registry(settings.registry)
    v0, v1, broken = (registry.register(model, metrics={}, data_summary={}).version for _ in range(3))
    for name in REPLICAS:
        replicas(name)
    deploy_and_wait(settings, collector, v0)
    deploy_and_wait(settings, collector, v1)
    monitor.start()

    damage(settings, broken)
    bad_deploy = commands.make("deploy", broken, "release", issued_by="ci")
    commands.publish(settings, bad_deploy)
    wait_for(lambda: answered_by_all(collector, bad_deploy, "rejected"), 60, "both replicas to reject it")

    # An alert says which replicas rejected it.
    rejection = wait_for(lambda: rejections(settings, broken), 60, "the rejected-activation alert")[0]
    assert rejection["state"] == "firing" and rejection["rule"] == "activation-rejected", rejection
    assert "rejected by 2 replica(s) (serve-a, serve-b)" in rejection["message"]
    assert f"serve-a: cannot load {broken}" in rejection["message"]
    monitor.stop()  # a restarted monitor finds it on the alert topic and does not fire it again
    monitor.start()

    # The history and `models history` say the fleet stays on v1.
    wait_for(lambda: read_state(settings).served() == v1, 30, f"{v1} served, as the heartbeats say")
    state = read_state(settings)
    assert (
        state.commanded == broken and state.unloadable(broken) and set(state.rejected(broken)) == {*REPLICAS}
    )
    capsys.readouterr()
    assert main(["models", "history"]) == 0
    text = capsys.readouterr().out
    assert f"served: {v1} (serve-a {v1}, serve-b {v1})" in text
    assert f"{broken}: no replica could load it" in text

    # v1, still served, turns bad: the monitor judges it and rolls it back past the unloadable version.
    reqs = traffic(v1, 120, seed=4, t0=int(time.time() * 1000), step_ms=10, hit=0, miss=0, exact=(0, 1))
    storefront = Storefront(settings)
    storefront.predictions(reqs)
    storefront.outcomes(reqs)
    storefront.tick(reqs[-1].ts + 2 * W, PARTITIONS)
    storefront.flush()
    rollback = wait_for(
        lambda: (a := read_state(settings).applied)[-1]["action"] == "rollback" and a[-1],
        90,
        "the monitor's rollback",
    )
    assert rollback["model_version"] == v0 and rollback["issued_by"] == ISSUER, rollback
    firing = next(a for a in read_events(settings, "alerts", "alert") if a["model_version"] == v1)
    assert firing["state"] == "firing" and f"rolling back to {v0}" in firing["message"]
    assert rollback["alert_id"] == firing["alert_id"]
    wait_for(lambda: answered_by_all(collector, rollback, "activated"), 60, f"both replicas back on {v0}")
    wait_for(lambda: read_state(settings).served() == v0, 30, f"{v0} served")
    # Its alert ends with the deployment it was about, once the replicas no longer serve v1.
    resolved = wait_for(
        lambda: [a for a in read_events(settings, "alerts", "alert") if a["alert_id"] == firing["alert_id"]][
            1:
        ],
        30,
        "the alert on v1 to end",
    )
    assert [a["state"] for a in resolved] == ["resolved"] and resolved[0]["cause"] == "not_served"
    # The broken version is no longer commanded: its rejection alert ends, once (a restart does not repeat).
    ended = wait_for(lambda: rejections(settings, broken)[1:], 30, "the rejected-activation alert to end")
    assert [(a["state"], a["cause"]) for a in ended] == [("resolved", "not_commanded")]
    raw = read_events(settings, "model-commands", "model-command")
    assert [c["action"] for c in raw].count("rollback") == 1, monitor.log()[-3000:]
