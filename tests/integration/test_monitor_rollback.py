"""Automatic rollback by the monitor worker, on the real broker with signed commands.

A healthy noisy version orders nothing; a bad version with no earlier one says so and orders nothing; a
bad version deployed over a healthy one gets exactly one rollback to it, however long it stays bad. With a
short cooldown: a bad version deployed inside it is rolled back once it has passed, by exactly one command;
its alert then resolves (it is no longer served), and deployed again and still bad, it is rolled back again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from services import kafka
from services.config import Settings
from services.deployment.commands import History, make, publish, read_history
from streams.rollback import ISSUER
from tests.integration.monitor_support import (
    ROLLBACK_MONITOR,
    ROLLBACK_RULE,
    ROLLBACK_WINDOW_MS,
    MonitorProcess,
    Req,
    Storefront,
    read_events,
    topic_world,
    traffic,
    wait_for,
    write_config,
)

PARTITIONS = 3
W = ROLLBACK_WINDOW_MS
KEY = "test-signing-key"
MONITOR, RULE = ROLLBACK_MONITOR, ROLLBACK_RULE


@dataclass
class World:
    settings: Settings
    next_ts: int
    produced: dict[str, int]
    monitor: MonitorProcess

    def serve(self, version: str, n: int, seed: int, **quality: Any) -> None:
        """``n`` requests served by ``version`` with their outcomes; wait until the monitor counted them."""
        reqs: list[Req] = traffic(version, n, seed=seed, t0=self.next_ts, step_ms=10, **quality)
        storefront = Storefront(self.settings)
        storefront.predictions(reqs)
        storefront.outcomes(reqs)
        tick = reqs[-1].ts + 2 * W
        storefront.tick(tick, PARTITIONS)
        self.next_ts = tick + 1
        self.produced[version] = self.produced.get(version, 0) + n
        total = self.produced[version]

        def counted() -> bool:
            latest = {
                m["model_version"]: m["total"] for m in read_events(self.settings, "metrics", "metrics")
            }
            return latest.get(version) == total

        wait_for(counted, 60, f"the monitor to count {total} requests of {version}", every=0.5)

    def deploy(self, version: str) -> None:
        publish(self.settings, make("deploy", version, "release", key=KEY, issued_by="test"))

    def alerts(self, version: str) -> list[dict[str, Any]]:
        return [a for a in read_events(self.settings, "alerts", "alert") if a["model_version"] == version]

    def history(self) -> History:
        return read_history(self.settings)

    def firing_persisted(self, version: str) -> bool:
        """Whether the monitor's windows changelog holds ``version``'s rule as firing."""
        topic = f"{self.settings.topic_prefix}monitor-windows-changelog"
        metas = [
            orjson.loads(value)
            for key, value, _ts in kafka.read_topic(self.settings, topic)
            if key is not None and value is not None and key.strip(b'"') == f"{version}|meta".encode()
        ]
        return bool(metas) and bool(metas[-1]["alerts"][RULE["name"]]["firing"])


def running_world(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, monitor_settings: dict[str, Any]
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("monitor-rollback")
    with topic_world(kafka_bootstrap, PARTITIONS) as plain:
        settings = plain.model_copy(update={"signing_key": SecretStr(KEY)})
        config = write_config(workdir / "monitor.toml", monitor_settings, [RULE])
        monitor = MonitorProcess(settings, config, workdir, {"MODELWATCH_SIGNING_KEY": KEY})
        monitor.start()
        try:
            yield World(settings, int(time.time() * 1000), {}, monitor)
        finally:
            monitor.stop()


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from running_world(kafka_bootstrap, tmp_path_factory, MONITOR)


COOLDOWN_S = 20


@pytest.fixture(scope="module")
def quick(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world whose monitor has a short rollback cooldown."""
    yield from running_world(
        kafka_bootstrap, tmp_path_factory, {**MONITOR, "rollback_cooldown_s": COOLDOWN_S}
    )


def test_a_healthy_noisy_version_orders_nothing(world: World) -> None:
    world.deploy("v1")
    world.serve("v1", 240, seed=1, hit=0.5, miss=0.05, missing=0.05)
    assert world.alerts("v1") == []
    assert [c["action"] for c in world.history().applied] == ["deploy"]


def test_a_bad_only_version_alerts_but_has_nowhere_to_go(world: World) -> None:
    world.serve("v1", 80, seed=2, hit=0, miss=0, exact=(0, 1))
    [firing] = wait_for(lambda: world.alerts("v1"), 20, "the alert on v1")
    assert firing["state"] == "firing" and "no earlier version" in firing["message"]
    assert [c["action"] for c in world.history().applied] == ["deploy"]
    world.serve("v1", 100, seed=3, hit=0, miss=0, exact=(2, 0))  # healthy again
    resolved = wait_for(lambda: len(a := world.alerts("v1")) >= 2 and a, 20, "the alert on v1 to resolve")
    assert [a["state"] for a in resolved] == ["firing", "resolved"]


def test_a_bad_deploy_is_rolled_back_once_to_the_previous_version(world: World) -> None:
    world.deploy("v2")
    world.serve("v2", 120, seed=4, hit=0, miss=0, exact=(0, 1))
    history = wait_for(lambda: (h := world.history()).active_version == "v1" and h, 30, "the rollback")
    world.serve("v2", 120, seed=5, hit=0, miss=0, exact=(0, 1))  # still bad, no longer active

    history = world.history()  # verifies every signature with the key
    assert not history.ignored
    assert [(c["action"], c["model_version"]) for c in history.applied] == [
        ("deploy", "v1"),
        ("deploy", "v2"),
        ("rollback", "v1"),
    ]
    command = history.applied[-1]
    # The alert ends with the deployment it was about: v2 no longer serves, whatever its late traffic says.
    firing, resolved = wait_for(lambda: len(a := world.alerts("v2")) >= 2 and a, 20, "the alert on v2 to end")
    assert firing["state"] == "firing" and firing["action"] == "rollback"
    assert (resolved["alert_id"], resolved["state"], resolved["cause"]) == (
        firing["alert_id"],
        "resolved",
        "not_served",
    )
    assert "v2 is no longer served: rollback to v1" in resolved["message"]
    assert len(world.alerts("v2")) == 2
    assert command["alert_id"] == firing["alert_id"] and command["issued_by"] == ISSUER
    assert "rolling back to v1" in firing["message"] and firing["alert_id"] in command["reason"]
    raw = read_events(world.settings, "model-commands", "model-command")
    assert sum(c["action"] == "rollback" for c in raw) == 1  # not merely deduplicated: sent once


def monitor_rollbacks(world: World) -> list[dict[str, Any]]:
    raw = read_events(world.settings, "model-commands", "model-command")
    return [c for c in raw if c["action"] == "rollback" and c.get("issued_by") == ISSUER]


def test_a_bad_version_deployed_inside_the_cooldown_is_rolled_back_once_it_has_passed(quick: World) -> None:
    quick.deploy("v1")
    quick.serve("v1", 60, seed=11, hit=0, miss=0, exact=(2, 0))  # healthy
    quick.deploy("v2")
    manual = make("rollback", "v1", "operator's rollback", key=KEY, issued_by="operator")
    publish(quick.settings, manual)
    quick.deploy("v3")  # a bad hotfix, well inside the cooldown of the operator's rollback
    quick.serve("v3", 80, seed=12, hit=0, miss=0, exact=(0, 1))
    [firing] = wait_for(lambda: quick.alerts("v3"), 30, "the alert on v3")
    assert firing["state"] == "firing" and "rollback cooldown" in firing["message"], firing["message"]

    # No more traffic: the timer's evaluations decide again until the cooldown has passed.
    history = wait_for(
        lambda: (h := quick.history()).active_version == "v1" and h, COOLDOWN_S + 60, "the delayed rollback"
    )
    command = history.applied[-1]
    assert (command["action"], command["alert_id"], command["issued_by"]) == (
        "rollback",
        firing["alert_id"],
        ISSUER,
    )
    assert command["ts"] - manual["ts"] >= COOLDOWN_S * 1000
    quick.serve("v3", 40, seed=13, hit=0, miss=0, exact=(0, 1))  # late traffic of v3 moves nothing
    assert [c["command_id"] for c in monitor_rollbacks(quick)] == [command["command_id"]]


def test_a_rolled_back_version_deployed_again_and_still_bad_is_rolled_back_again(quick: World) -> None:
    [before] = monitor_rollbacks(quick)  # from the test above: v3 rolled back to v1
    first, ended = wait_for(lambda: len(a := quick.alerts("v3")) >= 2 and a, 30, "v3's first alert to end")
    assert (ended["alert_id"], ended["state"], ended["cause"]) == (
        first["alert_id"],
        "resolved",
        "not_served",
    )

    quick.deploy("v3")  # a new deployment of the same version: fresh windows and alert states
    quick.serve("v3", 80, seed=14, hit=0, miss=0, exact=(0, 1))
    history = wait_for(
        lambda: (h := quick.history()).applied[-1]["action"] == "rollback" and h.active_version == "v1" and h,
        COOLDOWN_S + 60,
        "the second rollback of v3",
    )
    after = monitor_rollbacks(quick)
    assert [c["command_id"] for c in after[:-1]] == [before["command_id"]] and len(after) == 2
    second = history.applied[-1]
    alerts = quick.alerts("v3")
    again = [a for a in alerts if a["state"] == "firing" and a["alert_id"] != first["alert_id"]]
    assert [a["alert_id"] for a in again] == [second["alert_id"]]
    assert second["command_id"] != before["command_id"] and second["model_version"] == "v1"


def test_after_a_restart_with_no_traffic_the_ticks_alone_order_the_pending_rollback(quick: World) -> None:
    """The rollback of a version firing inside the cooldown is pending when the monitor is killed; after
    the restart no labelled request comes, and the timer's evaluations still decide it."""
    before = monitor_rollbacks(quick)
    quick.deploy("v4")  # bad, and inside the cooldown of the rollback of the test above
    quick.serve("v4", 80, seed=15, hit=0, miss=0, exact=(0, 1))
    [firing] = wait_for(lambda: quick.alerts("v4"), 30, "the alert on v4")
    assert "rollback cooldown" in firing["message"], firing["message"]
    wait_for(lambda: quick.firing_persisted("v4"), 30, "the firing state in the changelog", every=0.5)
    quick.monitor.kill()
    assert monitor_rollbacks(quick) == before  # still pending
    quick.monitor.start()
    history = wait_for(
        lambda: (h := quick.history()).active_version == "v1" and h, COOLDOWN_S + 90, "the pending rollback"
    )
    assert history.applied[-1]["alert_id"] == firing["alert_id"]
    assert len(monitor_rollbacks(quick)) == len(before) + 1
