"""`deploy` and `rollback` wait for every live replica's answer, on the real broker with real replicas; the
deployment state they wait on, and a starting replica's history, are read to their end however busy the
partitions are."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_END, TopicPartition

from schemas import codec
from services import kafka
from services.cli import main
from services.config import Settings
from services.deployment.commands import make, publish
from services.deployment.follower import CatchUp, read_state
from services.deployment.orders import AckWait
from services.deployment.state import now_ms
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from tests.integration.serving_support import Collector, Replica, wait_for

NAMES = ("serve-a", "serve-b")


@pytest.fixture(scope="module")
def model() -> Recommender:
    world = World.generate(11, n_users=400, n_items=150)
    return Recommender(n_components=4).fit(world.interactions(3000, seed=1))


@pytest.fixture
def replica_registry(tmp_path: Path) -> Path:
    """The replicas' own copy of the registry (a mirror): damaged there, a version still verifies for the
    CLI but not on the replicas, as when their storage differs from the operator's."""
    path = tmp_path / "replica-registry"
    path.mkdir()
    return path


@pytest.fixture
def replicas(tmp_path: Path, replica_registry: Path) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(instance: str) -> Replica:
        started.append(Replica(instance, tmp_path, env={"MODELWATCH_REGISTRY": str(replica_registry)}))
        return started[-1]

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGCONT)
        r.close()


def register(settings: Settings, model: Recommender, mirror: Path) -> str:
    version = Registry(settings.registry).register(model, metrics={}, data_summary={}).version
    shutil.copytree(Path(settings.registry, version), mirror / version)
    return version


def damage(mirror: Path, version: str) -> None:
    artifact = mirror / version / "model.joblib"
    artifact.chmod(0o644)
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_deploys_wait_for_every_live_replica_and_fail_on_a_rejection_or_a_silence(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[[str], Replica],
    replica_registry: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, v2, broken = (register(settings, model, replica_registry) for _ in range(3))
    damage(replica_registry, broken)

    # A first deploy before any replica runs: nothing to wait for, and that is no failure.
    code, out, err = run(capsys, ["deploy", v1])
    assert code == 0, err
    assert f"deploy {v1} published" in out and "no live replica" in out

    started = {name: replicas(name) for name in NAMES}
    wait_for(lambda: all(collector.events("activated", n) for n in NAMES), 120, "both replicas on v1")
    wait_for(lambda: set(read_state(settings).serving()) == set(NAMES), 30, "both replicas live")

    code, out, err = run(capsys, ["deploy", v2, "--reason", "weekly retrain"])
    assert code == 0, err
    for name in NAMES:
        assert f"{name} activated it in " in out and " ms" in out
    assert "acknowledged by every live replica (2)" in out
    with capsys.disabled():  # the delays, for the record
        print("\n" + out)

    # A version the replicas cannot load: both reject it, the deploy fails naming them and why.
    code, out, err = run(capsys, ["deploy", broken])
    assert code == 1
    assert f"deploy {broken} published" in out
    assert f"deploy {broken} was not activated by every live replica" in err
    for name in NAMES:
        assert f"{name} rejected it in " in err and f"cannot load {broken}" in err
    assert "sha256" in err
    with capsys.disabled():
        print(err)

    # A live replica that does not answer (frozen: its last heartbeat is recent) fails the rollback.
    frozen = started["serve-b"]
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        code, out, err = run(capsys, ["rollback", "--to", v1, "--timeout", "4"])
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert code == 1
    assert "serve-a activated it in " in out
    assert "serve-b: no answer within 4 s" in err and "serve-a" not in err

    # A live replica that stops heartbeating during the wait is not waited for until the timeout. The CLI
    # takes a replica as gone after three of its own heartbeats (2 s here: 6 s, room for its start-up).
    heartbeats_before = len(collector.events("heartbeat", "serve-b"))
    wait_for(
        lambda: len(collector.events("heartbeat", "serve-b")) > heartbeats_before + 1, 60, "serve-b back"
    )
    monkeypatch.setenv("MODELWATCH_SERVE__HEARTBEAT_S", "2")
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        code, out, err = run(capsys, ["deploy", v2, "--timeout", "120"])
        took = time.monotonic() - began
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert code == 1 and "serve-a activated it in " in out
    assert "serve-b: stopped heartbeating before it answered" in err and took < 60, (err, took)
    monkeypatch.delenv("MODELWATCH_SERVE__HEARTBEAT_S")

    # --no-wait publishes and returns.
    code, out, err = run(capsys, ["deploy", v2, "--no-wait"])
    assert code == 0, err
    assert f"deploy {v2} published" in out and "activated" not in out and "live replica" not in out


class Writer(threading.Thread):
    """Writes :meth:`message` every ``every_s``, counted as the broker acks them; bounded (``limit``
    messages), stopped by leaving the ``with`` block."""

    limit = 1200

    def __init__(self, settings: Settings, name: str, every_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.settings, self.every_s = settings, every_s
        self.acked = 0
        self.stop_event = threading.Event()

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    def message(self) -> tuple[str, bytes, bytes]:
        """(topic, key, value) of the next message."""
        raise NotImplementedError

    def run(self) -> None:
        producer = kafka.producer(self.settings, **{"linger.ms": 0})

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                self.acked += 1

        for _ in range(self.limit):
            if self.stop_event.wait(self.every_s):
                break
            topic, key, value = self.message()
            producer.produce(topic, value, key=key, on_delivery=on_delivery)
            producer.poll(0)
        producer.flush(10)


class Heartbeats(Writer):
    """A replica's heartbeats every ``every_s`` on its events partition (at most a minute at 50 ms)."""

    def __init__(self, settings: Settings, instance: str, every_s: float) -> None:
        super().__init__(settings, f"heartbeats-{instance}", every_s)
        self.instance = instance

    def message(self) -> tuple[str, bytes, bytes]:
        beat = {"instance": self.instance, "event": "heartbeat", "model_version": "v1", "ts": now_ms()}
        return self.settings.topic("model-events"), self.instance.encode(), codec("model-event").encode(beat)


def test_the_state_is_read_to_its_end_while_a_replica_heartbeats_faster_than_a_fetch_waits(
    settings: Settings,
) -> None:
    """librdkafka signals PARTITION_EOF only on a fetch answer with no new message for the partition, and
    the broker answers a fetch as soon as a message arrives on any partition fetched (or after
    fetch.wait.max.ms, 500 ms). Once the other partitions are at their end (here from the start: the
    command log is empty, so no answer is owed to it), a partition written every 50 ms never gives one; in
    a fresh-clone run three replicas beating every 0.5 s on one partition held a deploy 90 s. The wait
    reads each partition to its end as of its start instead, and does not wait for a pause."""
    with Heartbeats(settings, "serve-1", every_s=0.05) as beats:
        wait_for(lambda: beats.acked >= 20, 30, "the first heartbeats")  # on the log before the wait starts
        started = time.monotonic()
        with AckWait(settings, ready_timeout_s=30.0) as acks:
            took = time.monotonic() - started
            with acks.follower.lock:
                assert [r.instance for r in acks.follower.state.live()] == ["serve-1"]
                assert acks.follower.state.commanded is None
        assert beats.is_alive(), "the heartbeats went on during the whole wait"
    # Read to the end as of the start: seconds, even on a loaded machine (a wait for a pause never ended).
    assert took < 20.0


def test_an_event_written_after_the_start_to_a_partition_at_its_end_is_read(settings: Settings) -> None:
    """A partition with nothing recent starts at its end: the end's offset taken at start, not the logical
    end, which the fetcher resolves later and would put after an event written in between."""
    events = settings.topic("model-events")
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}test-reader")
    try:
        start = TopicPartition(events, 0, OFFSET_END)
        catch_up = CatchUp.of(consumer, [start])
        assert start.offset == 0 and catch_up.done  # empty: nothing to read to catch up
        beat = {"instance": "serve-1", "event": "heartbeat", "model_version": "v1", "ts": now_ms()}
        producer = kafka.producer(settings)
        producer.produce(events, codec("model-event").encode(beat), partition=0)
        assert producer.flush(10) == 0
        consumer.assign([start])

        def read() -> list[int]:
            return [m.offset() for m in consumer.consume(10, timeout=0.5) if m.error() is None]

        assert wait_for(read, 20, "the event written after the start") == [0]
    finally:
        consumer.close()


class Commands(Writer):
    """Another model's commands every ``every_s`` on the command log (every replica reads them and leaves
    them to that model's replicas); at most two minutes at 50 ms."""

    limit = 2400

    def __init__(self, settings: Settings, every_s: float) -> None:
        super().__init__(settings, "other-model-commands", every_s)

    def message(self) -> tuple[str, bytes, bytes]:
        command = make("deploy", "other-v1", "another model's", issued_by="test", model="other")
        return self.settings.topic("model-commands"), b"other", codec("model-command").encode(command)


def test_a_replica_starting_while_commands_keep_coming_reads_its_history_and_serves(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[[str], Replica],
    replica_registry: Path,
) -> None:
    """A replica reads the command log to its end before it serves: to its end as of its start, by
    offset, not until a PARTITION_EOF, which does not come while commands keep coming faster than a fetch
    waits (here another model's, every 50 ms)."""
    v1 = register(settings, model, replica_registry)
    publish(settings, make("deploy", v1, "the first", issued_by="test"))
    with Commands(settings, every_s=0.05) as others:
        wait_for(lambda: others.acked >= 20, 30, "the other model's first commands")
        replicas("serve-a")
        wait_for(lambda: collector.events("activated", "serve-a"), 90, "serve-a to read its history, serve")
        assert others.is_alive(), "the other model's commands went on during the whole start"
