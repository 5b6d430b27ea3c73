"""`modelwatch status` on the real broker: real replicas (one killed), a consumer group under the monitor's
name with a known lag, and alerts that fire and resolve."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from schemas import codec
from services import kafka
from services.cli import main
from services.config import Settings
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from tests.integration.serving_support import REPLICA_ENV, Replica, wait_for

HEARTBEAT_S = float(REPLICA_ENV["MODELWATCH_SERVE__HEARTBEAT_S"])


def status_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--json"]) == 0, capsys.readouterr().err
    doc = orjson.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def replica(doc: dict[str, Any], instance: str) -> dict[str, Any]:
    return next((r for r in doc["replicas"] if r["instance"] == instance), {"status": "unseen"})


def test_a_killed_replica_is_shown_gone_within_three_heartbeats_and_a_live_one_serving(
    settings: Settings,
    replicas: Callable[[str], Replica],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELWATCH_SERVE__HEARTBEAT_S", str(HEARTBEAT_S))  # the CLI's, as the replicas'
    world = World.generate(11, n_users=400, n_items=150)
    model = Recommender(n_components=4).fit(world.interactions(3000, seed=1))
    version = Registry(settings.registry).register(model, metrics={}, data_summary={}).version
    assert main(["deploy", version, "--no-wait"]) == 0
    live, doomed = replicas("serve-a"), replicas("serve-b")
    doc = wait_for(
        lambda: (
            (d := status_json(capsys))
            and all(replica(d, n)["status"] == "serving" for n in ("serve-a", "serve-b"))
            and d
        ),
        120,
        "both replicas serving",
    )
    assert doc["model"] == {
        "name": "recommender",
        "commanded": version,
        "served": version,
        "unloadable": False,
    }
    assert replica(doc, "serve-a")["version"] == version
    assert doc["last_commands"][-1]["action"] == "deploy" and doc["last_commands"][-1]["version"] == version

    doomed.kill()
    killed_at = time.monotonic()
    # One status shows both: the killed replica gone, the other serving (a loaded machine may delay one of
    # its 0.5 s heartbeats past three, so the pair is waited for, not asserted on the first read).
    doc = wait_for(
        lambda: (
            (d := status_json(capsys))
            and replica(d, "serve-b")["status"] == "gone"
            and replica(d, "serve-a")["status"] == "serving"
            and d
        ),
        30,
        "serve-b gone and serve-a serving",
    )
    shown_after_s = time.monotonic() - killed_at
    gone = replica(doc, "serve-b")
    # Gone once its last heartbeat is older than three heartbeats, and not long after (one status read).
    assert 3 * HEARTBEAT_S <= gone["last_heartbeat_age_s"] < 3 * HEARTBEAT_S + 10, gone  # ages: 0.1 s
    assert live.proc.poll() is None
    with capsys.disabled():  # the figure, for the record
        print(
            f"\nserve-b gone {shown_after_s:.1f}s after SIGKILL (last heard {gone['last_heartbeat_age_s']}s)"
        )

    capsys.readouterr()
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "serve-b" in text and "gone" in text and "serving" in text and f"commanded {version}" in text


def alert(alert_id: str, state: str, ts: int) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "rule": "f1-low",
        "state": state,
        "model_version": "20261124T034100-3f2a9c1b",
        "metric": "f1",
        "value": 0.18,
        "threshold": 0.3,
        "ts": ts,
        "severity": "critical",
        "action": "rollback",
    }


def test_status_shows_the_monitor_group_lag_and_only_the_alerts_still_firing(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000)
    producer = kafka.producer(settings)
    topic = settings.topic("alerts")
    for event in (
        alert("a-1", "firing", now - 2000),
        alert("a-2", "firing", now - 1500),
        alert("a-1", "resolved", now - 1000),
    ):
        producer.produce(topic, codec("alert").encode(event), b"recsys")
    outcomes = settings.topic("outcomes")
    for i in range(10):
        producer.produce(outcomes, b"{}", partition=0, key=str(i).encode())
    assert producer.flush(30) == 0

    # A member of the monitor's source reader group that has read 4 of the 10 messages on partition 0.
    group = f"{settings.topic_prefix}monitor-route"
    consumer = kafka.consumer(settings, group, **{"client.id": "monitor-under-test"})
    try:
        consumer.subscribe([outcomes])
        wait_for(
            lambda: consumer.poll(0.2) is None and bool(consumer.assignment()), 60, "the group assignment"
        )
        consumer.commit(offsets=[TopicPartition(outcomes, 0, 4)], asynchronous=False)
        doc = status_json(capsys)
    finally:
        consumer.close()
    assert doc["monitor"]["group"] == f"{settings.topic_prefix}monitor" and doc["monitor"]["members"] == []
    monitor = doc["monitor_sources"]
    assert monitor["group"] == group and "error" not in monitor, monitor
    assert [m["client_id"] for m in monitor["members"]] == ["monitor-under-test"]
    assert {"topic": outcomes, "partition": 0, "lag": 6} in monitor["lag"] and monitor["total_lag"] == 6
    assert [a["alert_id"] for a in doc["alerts_firing"]] == ["a-2"]

    capsys.readouterr()
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "lag 6 messages" in text and "f1-low" in text
