"""The command log on the real broker: one partition, one order, whoever writes it, whatever its clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from schemas import codec
from schemas.errors import KafkaClientError
from services import kafka
from services.cli import main
from services.config import Settings, load_settings
from services.deployment import commands
from services.deployment.commands import Action
from services.deployment.follower import read_state
from services.kafka.topics import create_topics, delete_topics, ensure_topics
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from streams.history import CommandFollower
from tests.integration.serving_support import Collector, Replica, encoded, produce, requests_of, wait_for

ONE_LINE = "the command log needs exactly one"


@pytest.fixture
def three_partition_log(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A prefix whose command topic was made with three partitions (as `topics create` did before)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("MODELWATCH_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("MODELWATCH_TOPIC_PREFIX", prefix)
    settings = load_settings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(settings, [NewTopic(settings.topic("model-commands"), 3, 1)])
    yield settings
    delete_topics(settings)


def test_every_reader_refuses_a_command_topic_with_more_than_one_partition(
    three_partition_log: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = three_partition_log
    topic = settings.topic("model-commands")

    with pytest.raises(KafkaClientError, match=ONE_LINE):
        create_topics(settings)
    assert main(["topics", "create"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and topic in err and "MODELWATCH_TOPIC_PREFIX" in err, err

    assert main(["models", "history"]) == 1
    assert ONE_LINE in capsys.readouterr().err
    assert main(["rollback"]) == 1
    assert ONE_LINE in capsys.readouterr().err

    with pytest.raises(KafkaClientError, match=ONE_LINE):
        CommandFollower(settings).start()

    # A replica and the monitor stop at start, saying why in their last line. The other topics exist (the
    # monitor waits for its sources first): `topics create` made them before refusing the command topic.
    for command in (["serve", "--instance", "refuser"], ["monitor"]):
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", *command],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "MODELWATCH_MONITOR__DATA_DIR": str(tmp_path / "monitor")},
        )
        assert done.returncode == 1, command
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("modelwatch: error:") and ONE_LINE in last, done.stderr[-2000:]


# -- one order, whoever writes and whatever their clock ---------------------------------------------------

#: A model name (the commands' key) that librdkafka's default partitioner (crc32) and the CLI's (murmur2)
#: would put on different partitions of a three-partition topic (0 and 2): with more than one partition,
#: their commands would have no order between them.
SPLIT_KEY = "recsys"


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(11, n_users=400, n_items=150)


@pytest.fixture(scope="module")
def model(world: World) -> Recommender:
    return Recommender(n_components=4).fit(world.interactions(3000, seed=1))


def register(settings: Settings, model: Recommender) -> str:
    return Registry(settings.registry).register(model, metrics={}, data_summary={}).version


def on_the_log(settings: Settings) -> list[dict[str, Any]]:
    return [
        codec("model-command").decode(v)
        for _k, v, _ts in kafka.read_topic(settings, settings.topic("model-commands"))
    ]


def history_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["models", "history", "--json"]) == 0, capsys.readouterr().err
    doc = orjson.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def activated(collector: Collector, instance: str) -> list[str]:
    return [e["command_id"] for e in collector.events("activated", instance)]


def test_commands_from_a_stock_client_and_the_cli_are_seen_in_one_order_by_everyone(
    make_settings: Callable[..., Settings],
    model: Recommender,
    replicas: Callable[[str], Replica],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODELWATCH_MODEL_NAME", SPLIT_KEY)
    settings = make_settings(model_name=SPLIT_KEY)
    collector = Collector(settings)
    live_follower = CommandFollower(settings)  # the monitor's view, following as commands come
    try:
        v1, v2, v3 = (register(settings, model) for _ in range(3))
        assert main(["deploy", v1, "--reason", "first"]) == 0
        # Following before any replica ever said a word: their events are followed as they come.
        live_follower.start()
        assert live_follower.ready.wait(30) and live_follower.served() is None
        names = ("serve-a", "serve-b")
        for name in names:
            replicas(name)
        wait_for(lambda: all(activated(collector, n) for n in names), 90, "both replicas on the first deploy")
        wait_for(lambda: live_follower.served() == v1, 30, "the live follower to see v1 served")

        # A stock librdkafka producer (default settings: consistent_random partitioner), on a host whose
        # clock is five minutes behind, and the CLI, taking turns; each write acknowledged before the next.
        stock = Producer({"bootstrap.servers": settings.bootstrap_servers})
        behind = int(time.time() * 1000) - 5 * 60_000
        published: list[tuple[str, str]] = []
        turns: list[tuple[str, Action, str]] = [
            ("stock", "deploy", v2),
            ("cli", "deploy", v3),
            ("stock", "rollback", v1),
            ("cli", "rollback", v2),
            ("stock", "deploy", v3),
            ("cli", "deploy", v1),
        ]
        for n, (writer, action, version) in enumerate(turns):
            if writer == "stock":
                command = commands.make(action, version, f"stock {n}", issued_by="kcat", ts=behind + n)
                stock.produce(
                    settings.topic("model-commands"), codec("model-command").encode(command), SPLIT_KEY
                )
                assert stock.flush(10) == 0
            else:
                argv = [action, version] if action == "deploy" else [action, "--to", version]
                assert main([*argv, "--reason", f"cli {n}"]) == 0
            published.append((action, version))

        log = on_the_log(settings)
        assert [(c["action"], c["model_version"]) for c in log[1:]] == published
        order = [c["command_id"] for c in log]
        for name in names:
            wait_for(
                lambda n=name: activated(collector, n) == order, 90, f"{name} to obey every command in order"
            )
        wait_for(lambda: [c["command_id"] for c in live_follower.applied()] == order, 30, "the live follower")

        # Read again from the start: a replica and a monitor that start now, and the CLI.
        replicas("serve-late")
        wait_for(lambda: activated(collector, "serve-late") == order[-1:], 90, "the late replica")
        restarted = CommandFollower(settings)
        restarted.start()
        try:
            assert restarted.ready.wait(30)
            assert [c["command_id"] for c in restarted.applied()] == order
        finally:
            restarted.stop()
        doc = history_json(capsys)
        assert [p["command_id"] for p in doc["periods"]] == order
        assert doc["active"] == doc["commanded"] == v1 and not doc["ignored"]
        wait_for(lambda: history_json(capsys)["served"] == v1, 30, "models history to see v1 served")
        last = history_json(capsys)["periods"][-1]["acks"]
        assert {i: a["event"] for i, a in last.items()} == {n: "activated" for n in (*names, "serve-late")}
    finally:
        live_follower.stop()
        collector.close()


def test_a_deploy_stamped_ten_minutes_ahead_then_a_rollback_is_obeyed_by_every_replica(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[[str], Replica],
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1, v2 = register(settings, model), register(settings, model)
    assert main(["deploy", v1]) == 0
    names = ("serve-a", "serve-b")
    for name in names:
        replicas(name)
    wait_for(lambda: all(activated(collector, n) for n in names), 90, "both replicas on v1")
    ahead = commands.make(
        "deploy",
        v2,
        "from a laptop whose clock is ahead",
        issued_by="cli:laptop",
        ts=int(time.time() * 1000) + 600_000,
    )
    commands.publish(settings, ahead)
    for name in names:
        wait_for(lambda n=name: activated(collector, n)[-1:] == [ahead["command_id"]], 60, f"{name} on v2")

    capsys.readouterr()
    assert main(["rollback", "--reason", "v2 misbehaves"]) == 0
    assert f"rollback to {v1} published" in capsys.readouterr().out
    rollback = on_the_log(settings)[-1]
    for name in names:
        wait_for(
            lambda n=name: activated(collector, n)[-1:] == [rollback["command_id"]],
            60,
            f"{name} to obey the rollback",
        )
    assert not collector.events("rejected")
    doc = wait_for(lambda: (d := history_json(capsys))["served"] == v1 and d, 30, "v1 served again")
    assert doc["active"] == v1 and doc["periods"][-1]["command_id"] == rollback["command_id"]
    assert set(doc["periods"][-1]["acks"]) == set(names)
    assert main(["models", "history"]) == 0
    text = capsys.readouterr().out
    assert "clock is ahead [stamped later than the next command" in text and f"active: {v1}" in text


def test_a_version_no_replica_can_load_is_shown_as_such_and_the_old_one_keeps_serving(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[[str], Replica],
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1, broken = register(settings, model), register(settings, model)
    assert main(["deploy", v1]) == 0
    names = ("serve-a", "serve-b")
    for name in names:
        replicas(name)
    wait_for(lambda: all(activated(collector, n) for n in names), 90, "both replicas on v1")
    follower = CommandFollower(settings)
    follower.start()
    try:
        # The artifact is damaged after it was registered (a storage fault): the replicas' registry check
        # refuses it. Published as any client could, without the CLI's own check.
        artifact = Path(settings.registry, broken, "model.joblib")
        artifact.chmod(0o644)
        data = bytearray(artifact.read_bytes())
        data[-1] ^= 0xFF
        artifact.write_bytes(bytes(data))
        deploy = commands.make("deploy", broken, "release", issued_by="ci")
        commands.publish(settings, deploy)
        for name in names:
            wait_for(
                lambda n=name: any(
                    e.get("command_id") == deploy["command_id"] for e in collector.events("rejected", n)
                ),
                60,
                f"{name} to reject the broken version",
            )

        state = read_state(settings)
        assert state.commanded == broken and state.unloadable(broken)
        assert set(state.rejected(broken)) == set(names)
        assert all("cannot load" in why and "sha256" in why for why in state.rejected(broken).values())
        wait_for(lambda: read_state(settings).served() == v1, 30, "v1 served, as heartbeats say")
        wait_for(lambda: follower.served() == v1 and follower.commanded() == broken, 30, "the monitor's view")
        assert set(follower.rejected(broken)) == set(names) and follower.unloadable(broken)

        capsys.readouterr()
        assert main(["models", "history"]) == 0
        text = capsys.readouterr().out
        assert f"served: {v1} (serve-a {v1}, serve-b {v1})" in text
        assert f"{broken}: no replica could load it" in text
        assert f"{broken} rejected by serve-a: cannot load {broken}" in text

        # Rolling back from it goes to v1, the version still served.
        assert main(["rollback"]) == 0
        assert f"rollback to {v1} published" in capsys.readouterr().out
    finally:
        follower.stop()
    requests = requests_of(World.generate(11, n_users=400, n_items=150), 300, seed=3)
    produce(settings, encoded(requests))
    wait_for(lambda: len(collector.answered()) == 300, 60, "the requests answered")
    assert {p["model_version"] for p in collector.predictions()} == {v1}
