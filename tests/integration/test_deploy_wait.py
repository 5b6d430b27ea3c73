"""`deploy` and `rollback` wait for every live replica's answer, on the real broker with real replicas."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli import main
from services.config import Settings
from services.deployment.follower import read_state
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
