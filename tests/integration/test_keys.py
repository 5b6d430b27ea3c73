"""Keys per role on the real broker: two ``modelwatch serve`` replicas that hold only the keyring refuse
every command or version no allowed key signed, say why in a ``rejected`` model event, unpickle nothing,
and keep serving; a rotated-out key's signatures are refused once the replicas restart without it.

The versions the refused commands name are pickles whose unpickling creates a marker directory: the
marker staying absent is the proof that nothing was unpickled (the last step of the first test shows a
replica does create it once a valid command names such a version).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.cli import main
from services.config import Settings, load_settings
from services.deployment import commands
from services.deployment.follower import read_state
from services.model.recommender import Recommender
from services.registry import Registry
from services.registry.keys import PublicKey, Signer, generate
from services.sandbox.versions import train_on_world
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
from tests.integration.serving_support import Collector, Replica, encoded, produce, requests_of, wait_for

NAMES = ("serve-a", "serve-b")


class MarkerOnUnpickle:
    """Unpickling this runs code: it creates the directory named by ``path`` (in every process that
    unpickles it: ``exist_ok``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, int, bool]]:
        return (os.makedirs, (self.path, 0o755, True))


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(18, n_users=200, n_items=80)


@pytest.fixture(scope="module")
def model(world: World) -> Recommender:
    return Recommender(n_components=3).fit(world.interactions(1500, seed=18))


def key_pair(directory: Path, name: str, role: str) -> tuple[Signer, PublicKey]:
    public = generate(role, directory / f"{name}.pem")  # type: ignore[arg-type]
    return Signer.load(directory / f"{name}.pem"), public


def keyring_env(path: Path, *keys: PublicKey) -> dict[str, str]:
    """What a replica runs with: the keyring file, and no private key at all."""
    path.write_text("".join(f"{k.line()}\n" for k in keys))
    return {"MODELWATCH_KEYS__KEYRING_FILE": str(path)}


def publish(settings: Settings, signer: Signer, action: str, version: str, reason: str) -> dict[str, Any]:
    command = commands.make(action, version, reason, signer=signer)  # type: ignore[arg-type]
    commands.publish(settings, command)
    return command


def answers(
    collector: Collector, command: dict[str, Any], names: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """The answer of each of ``names`` to ``command``, once all have answered."""
    found = wait_for(
        lambda: (a := collector.acked(command["command_id"])) and set(names) <= set(a) and a,
        60,
        f"every replica's answer to {command['reason']}",
    )
    return {name: found[name] for name in names}


def serving(collector: Collector, names: tuple[str, ...], version: str) -> bool:
    beats = [collector.events("heartbeat", n) for n in names]
    return all(b and b[-1]["model_version"] == version and b[-1].get("partitions") for b in beats)


def test_replicas_refuse_what_no_allowed_key_signed_and_unpickle_nothing(
    settings: Settings,
    model: Recommender,
    world: World,
    collector: Collector,
    replicas: Callable[..., Replica],
    tmp_path: Path,
) -> None:
    publisher, publisher_pub = key_pair(tmp_path, "publisher", "publisher")
    operator, operator_pub = key_pair(tmp_path, "operator", "operator")
    monitor, monitor_pub = key_pair(tmp_path, "monitor", "monitor")
    own, _ = key_pair(tmp_path, "replica-own", "operator")  # a replica's own pair: not in the keyring
    env = keyring_env(tmp_path / "keyring", publisher_pub, operator_pub, monitor_pub)

    marker = tmp_path / "unpickled"
    v1 = Registry(settings.registry, publisher=publisher).register(model, metrics={}, data_summary={}).version
    evil = Registry(settings.registry, publisher=publisher).register(
        MarkerOnUnpickle(str(marker)), metrics={}, data_summary={}
    )
    evil_by_operator = Registry(settings.registry, publisher=operator).register(
        MarkerOnUnpickle(str(marker)), metrics={}, data_summary={}
    )
    first = publish(settings, operator, "deploy", v1, "v1, signed as it should be")
    for name in NAMES:
        replicas(name, env=env)
    assert all(a["event"] == "activated" for a in answers(collector, first, NAMES).values())
    wait_for(lambda: serving(collector, NAMES, v1), 60, f"both replicas serving {v1}")

    refused = {
        "unknown key": publish(settings, own, "deploy", evil.version, "signed by a replica's own key"),
        "role not allowed: key": publish(settings, monitor, "deploy", evil.version, "the monitor deploys"),
        "nobody deployed before": publish(
            settings, monitor, "rollback", evil.version, "the monitor names a new version"
        ),
        "unsigned": publish(settings, None, "deploy", evil.version, "no signature"),  # type: ignore[arg-type]
        "which may not publish": publish(
            settings, operator, "deploy", evil_by_operator.version, "a manifest an operator signed"
        ),
    }
    for reason, command in refused.items():
        for name, answer in answers(collector, command, NAMES).items():
            print(f"{command['reason']} -> {name}: {answer['error']}")
            assert answer["event"] == "rejected" and reason in answer["error"], (name, answer)
            assert answer["model_version"] == command["model_version"]
    assert (
        "cannot load" in collector.acked(refused["which may not publish"]["command_id"])["serve-a"]["error"]
    )
    assert not marker.exists()

    requests = requests_of(world, 300, seed=18)
    produce(settings, encoded(requests))
    wait_for(lambda: len(collector.answered()) == 300, 60, "every request answered")
    assert {p["model_version"] for p in collector.predictions()} == {v1}
    assert serving(collector, NAMES, v1)

    # Control: the same pickle, published and deployed by the right keys, is unpickled by the replicas
    # (which then refuse it as not a model): the marker can appear, so its absence above means something.
    control = publish(settings, operator, "deploy", evil.version, "a valid command for the marker pickle")
    for answer in answers(collector, control, NAMES).values():
        assert answer["event"] == "rejected" and "not a model" in answer["error"]
    assert marker.exists()


def test_rotation_both_keys_verify_while_listed_and_old_ones_are_refused_once_removed(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[..., Replica],
    tmp_path: Path,
) -> None:
    old_publisher, old_publisher_pub = key_pair(tmp_path, "publisher-old", "publisher")
    new_publisher, new_publisher_pub = key_pair(tmp_path, "publisher-new", "publisher")
    old_operator, old_operator_pub = key_pair(tmp_path, "operator-old", "operator")
    new_operator, new_operator_pub = key_pair(tmp_path, "operator-new", "operator")
    both = keyring_env(
        tmp_path / "keyring-both", old_publisher_pub, new_publisher_pub, old_operator_pub, new_operator_pub
    )
    v_old = Registry(settings.registry, publisher=old_publisher).register(model, metrics={}, data_summary={})
    v_new = Registry(settings.registry, publisher=new_publisher).register(model, metrics={}, data_summary={})

    started = [replicas(name, env=both) for name in NAMES]
    wait_for(lambda: all(collector.events("heartbeat", n) for n in NAMES), 60, "both replicas up")
    while_both = [
        publish(settings, old_operator, "deploy", v_old.version, "old operator, old publisher"),
        publish(settings, new_operator, "deploy", v_new.version, "new operator, new publisher"),
        publish(settings, new_operator, "rollback", v_old.version, "new operator, old publisher"),
        publish(settings, old_operator, "rollback", v_new.version, "old operator, new publisher"),
    ]
    for command in while_both:
        for name, answer in answers(collector, command, NAMES).items():
            assert answer["event"] == "activated", (command["reason"], name, answer)

    # The old keys leave the keyring: the replicas restart with the new one.
    for replica in started:
        assert replica.terminate() == 0
    rotated = keyring_env(tmp_path / "keyring-new", new_publisher_pub, new_operator_pub)
    restarted = ("serve-c", "serve-d")
    for name in restarted:
        replicas(name, env=rotated)
    # Read again from the log, the old operator's commands count no more, and the last one left (the new
    # operator's rollback to v_old) names a version the old publisher signed: refused, so each starts with
    # the version before it.
    wait_for(lambda: serving(collector, restarted, v_new.version), 60, "restarted replicas serving v_new")
    for name, answer in answers(collector, while_both[2], restarted).items():
        assert answer["event"] == "rejected" and "cannot load" in answer["error"], (name, answer)
        assert "unknown key" in answer["error"] and v_old.version in answer["error"]

    old_signature = publish(settings, old_operator, "deploy", v_new.version, "old operator after rotation")
    old_manifest = publish(settings, new_operator, "deploy", v_old.version, "old publisher after rotation")
    still_good = publish(settings, new_operator, "deploy", v_new.version, "new keys after rotation")
    for name, answer in answers(collector, old_signature, restarted).items():
        assert answer["event"] == "rejected" and "unknown key" in answer["error"], (name, answer)
    for name, answer in answers(collector, old_manifest, restarted).items():
        assert answer["event"] == "rejected" and "cannot load" in answer["error"], (name, answer)
        assert "unknown key" in answer["error"] and v_old.version in answer["error"]
    for name, answer in answers(collector, still_good, restarted).items():
        assert answer["event"] == "activated", (name, answer)


def test_train_and_deploy_sign_with_the_private_keys_the_settings_name(
    settings: Settings,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, publisher_pub = key_pair(tmp_path, "publisher", "publisher")
    _, operator_pub = key_pair(tmp_path, "operator", "operator")
    env = keyring_env(tmp_path / "keyring", publisher_pub, operator_pub)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODELWATCH_KEYS__PUBLISHER_KEY", str(tmp_path / "publisher.pem"))
    keyed = load_settings()
    assert keyed.topic_prefix == settings.topic_prefix
    version = train_on_world(keyed, seed=18, world=world, sessions=1500).version
    manifest = Registry.from_settings(keyed).manifest(version)  # raises unless a publisher signed it
    assert manifest.signed_by is not None and manifest.signed_by["key_id"] == publisher_pub.key_id

    # Without the operator's private key the CLI refuses: the keyring's holders would ignore the command.
    assert main(["deploy", version, "--no-wait", "--reason", "no key"]) == 1
    assert "no operator key (keys.operator_key)" in capsys.readouterr().err
    commands.publish(keyed, commands.make("deploy", version, "no key"))  # written anyway: ignored
    monkeypatch.setenv("MODELWATCH_KEYS__OPERATOR_KEY", str(tmp_path / "operator.pem"))
    assert main(["deploy", version, "--no-wait", "--reason", "signed"]) == 0
    history = commands.read_history(load_settings())
    assert [c["reason"] for c in history.applied] == ["signed"]
    assert history.applied[0]["signed_by"]["key_id"] == operator_pub.key_id
    [(ignored, why)] = history.ignored
    assert ignored is not None and ignored["reason"] == "no key" and "unsigned" in why
    capsys.readouterr()
    assert main(["models", "history"]) == 0
    assert "unsigned" in capsys.readouterr().out
    assert main(["models", "verify", version]) == 0
    assert "verified (publisher key and sha256" in capsys.readouterr().out


def test_the_monitors_rollback_is_signed_with_its_key_and_obeyed(
    settings: Settings,
    model: Recommender,
    collector: Collector,
    replicas: Callable[..., Replica],
    tmp_path: Path,
) -> None:
    """The monitor holds only its own private key and the keyring; its automatic rollback of a bad version
    is signed with it, and the replicas, which hold only the keyring, obey it."""
    publisher, publisher_pub = key_pair(tmp_path, "publisher", "publisher")
    operator, operator_pub = key_pair(tmp_path, "operator", "operator")
    _, monitor_pub = key_pair(tmp_path, "monitor", "monitor")
    env = keyring_env(tmp_path / "keyring", publisher_pub, operator_pub, monitor_pub)
    registry = Registry(settings.registry, publisher=publisher)
    v0, v1 = (registry.register(model, metrics={}, data_summary={}).version for _ in range(2))
    for name in NAMES:
        replicas(name, env=env)
    for version in (v0, v1):
        deploy = publish(settings, operator, "deploy", version, "release")
        assert all(a["event"] == "activated" for a in answers(collector, deploy, NAMES).values())

    workdir = tmp_path / "monitor"
    workdir.mkdir()
    config = write_config(workdir / "monitor.toml", ROLLBACK_MONITOR, [ROLLBACK_RULE])
    monitor = MonitorProcess(
        settings, config, workdir, {**env, "MODELWATCH_KEYS__MONITOR_KEY": str(tmp_path / "monitor.pem")}
    )
    monitor.start()
    try:
        # v1 turns bad: every labelled request a miss.
        reqs = traffic(v1, 120, seed=4, t0=int(time.time() * 1000), step_ms=10, hit=0, miss=0, exact=(0, 1))
        storefront = Storefront(settings)
        storefront.predictions(reqs)
        storefront.outcomes(reqs)
        storefront.tick(reqs[-1].ts + 2 * ROLLBACK_WINDOW_MS, 6)
        storefront.flush()
        rollback = wait_for(
            lambda: [c for c in read_state(settings).applied if c["action"] == "rollback"],
            90,
            "the monitor's rollback",
        )[-1]
    finally:
        monitor.stop()
    assert rollback["issued_by"] == ISSUER and rollback["model_version"] == v0, rollback
    assert rollback["signed_by"]["key_id"] == monitor_pub.key_id, rollback
    assert all(a["event"] == "activated" for a in answers(collector, rollback, NAMES).values())
