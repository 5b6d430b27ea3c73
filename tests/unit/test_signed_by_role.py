"""Manifests and commands signed per role: what a keyring lets through, and what it refuses (and why)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas import codec
from schemas.errors import ContractError, RegistryError, VerificationError
from services.config import KeySettings, load_settings
from services.deployment import commands
from services.deployment.follower import UNAUTHENTICATED, Follower, authenticated
from services.deployment.state import DeploymentState
from services.registry import Registry
from services.registry.keys import Keyring, PublicKey, Signer, generate
from streams.fleet import Fleet
from streams.rollback import RollbackPolicy


class MarkerOnUnpickle:
    """Unpickling this runs code: it creates the directory named by ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


class Keys:
    """A publisher, an operator, the monitor, and one key of each role nobody listed."""

    def __init__(self, tmp_path: Path) -> None:
        def pair(name: str, role: str) -> tuple[Signer, PublicKey]:
            public = generate(role, tmp_path / f"{name}.pem")  # type: ignore[arg-type]
            return Signer.load(tmp_path / f"{name}.pem"), public

        self.publisher, self.publisher_pub = pair("publisher", "publisher")
        self.operator, self.operator_pub = pair("operator", "operator")
        self.monitor, self.monitor_pub = pair("monitor", "monitor")
        self.stranger, _ = pair("stranger", "operator")
        self.ring = Keyring([self.publisher_pub, self.operator_pub, self.monitor_pub])


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_commands_count_only_when_a_role_that_may_order_them_signed_them(keys: Keys) -> None:
    deploy_v1 = commands.make("deploy", "v1", "a", signer=keys.operator, ts=1)
    codec("model-command").validate(deploy_v1)  # signed_by is part of the contract
    deploy_v2 = commands.make("deploy", "v2", "b", signer=keys.operator, ts=2)
    by_monitor = commands.make("deploy", "v3", "monitor deploys", signer=keys.monitor, ts=3)
    stranger = commands.make("deploy", "v4", "not in the keyring", signer=keys.stranger, ts=4)
    unsigned = commands.make("deploy", "v5", "unsigned", ts=5)
    to_unknown = commands.make("rollback", "v6", "never deployed", signer=keys.monitor, ts=6)
    by_publisher = commands.make("deploy", "v7", "publisher", signer=keys.publisher, ts=7)
    altered = {**commands.make("deploy", "v8", "c", signer=keys.operator, ts=8), "model_version": "v9"}
    monitor_back = commands.make("rollback", "v1", "alert", signer=keys.monitor, ts=9)
    history = commands.History.of(
        [
            deploy_v1,
            deploy_v2,
            by_monitor,
            stranger,
            unsigned,
            to_unknown,
            by_publisher,
            altered,
            monitor_back,
        ],
        keyring=keys.ring,
    )
    assert [c["model_version"] for c in history.applied] == ["v1", "v2", "v1"]
    why = {command["model_version"]: reason for command, reason in history.ignored if command}
    assert "role not allowed" in why["v3"] and "monitor role, which may not deploy" in why["v3"]
    assert "unknown key" in why["v4"]
    assert "unsigned" in why["v5"]
    assert "role not allowed" in why["v6"] and "nobody deployed before" in why["v6"]
    assert "role not allowed" in why["v7"] and "publisher role, which may not deploy" in why["v7"]
    assert "bad signature" in why["v9"]
    # Without a keyring every one of them is obeyed, as before.
    assert len(commands.History.of([deploy_v1, by_monitor, stranger, unsigned]).applied) == 4


def test_the_legacy_key_and_the_keyring_are_both_checked_when_both_are_set(keys: Keys) -> None:
    both = commands.make("deploy", "v1", "a", key="k", signer=keys.operator, ts=1)
    only_hmac = commands.make("deploy", "v2", "b", key="k", ts=2)
    only_key = commands.make("deploy", "v3", "c", signer=keys.operator, ts=3)
    history = commands.History.of([both, only_hmac, only_key], key="k", keyring=keys.ring)
    assert [c["model_version"] for c in history.applied] == ["v1"]


def test_a_malformed_signed_by_breaks_the_contract(keys: Keys) -> None:
    command = commands.make("deploy", "v1", "a", signer=keys.operator, ts=1)
    with pytest.raises(ContractError, match="signed_by"):
        codec("model-command").validate({**command, "signed_by": {**command["signed_by"], "alg": "rsa"}})


def test_the_monitor_signs_its_rollbacks_and_replicas_obey_them(keys: Keys) -> None:
    applied = [
        commands.make("deploy", "v1", "a", signer=keys.operator, ts=1),
        commands.make("deploy", "v2", "b", signer=keys.operator, ts=2),
    ]
    state = DeploymentState(keyring=keys.ring)
    for c in applied:
        assert state.feed_command(c)
    for instance in ("r1", "r2"):
        state.feed_event({"instance": instance, "event": "heartbeat", "model_version": "v2", "ts": 10**13})
    alert = {"alert_id": "a-1", "model_version": "v2", "metric": "f1", "value": 0.1, "threshold": 0.3}
    policy = RollbackPolicy(0, signer=keys.monitor)
    decision = policy.decide(alert=alert, fleet=Fleet.of(state, now_ms=10**13), unhealthy=(), now_ms=10**13)
    assert decision.command is not None and decision.command["signed_by"]["key_id"] == keys.monitor.key_id
    assert state.feed_command(decision.command)
    assert state.commanded == "v1"


def test_versions_need_a_publisher_signature_with_a_keyring_and_nothing_else_is_unpickled(
    tmp_path: Path, keys: Keys
) -> None:
    url = str(tmp_path / "registry")
    published = Registry(url, publisher=keys.publisher).register({"a": 1}, metrics={}, data_summary={})
    assert published.signed_by is not None and published.signed_by["key_id"] == keys.publisher.key_id
    marker = tmp_path / "code-ran"
    by_operator = Registry(url, publisher=keys.operator).register(
        MarkerOnUnpickle(str(marker)), metrics={}, data_summary={}
    )
    unsigned = Registry(url).register(MarkerOnUnpickle(str(marker)), metrics={}, data_summary={})
    checked = Registry(url, keyring=keys.ring)
    assert checked.verify(published.version) == published
    for version, reason in [
        (by_operator.version, "role not allowed: key .* has the operator role, which may not publish"),
        (unsigned.version, "unsigned: the manifest carries no signature"),
    ]:
        with pytest.raises(VerificationError, match=rf"version {version}: manifest refused: {reason}"):
            checked.load(version)
    assert not marker.exists()
    assert [m.version for m in checked.versions()] == [published.version]
    # Control: without a keyring the operator's version is unpickled, and its code runs.
    with pytest.raises(RegistryError, match="not a model"):
        Registry(url).load(by_operator.version)
    assert marker.exists()


def test_an_altered_manifest_fails_the_publisher_signature(tmp_path: Path, keys: Keys) -> None:
    url = str(tmp_path / "registry")
    registry = Registry(url, publisher=keys.publisher, keyring=keys.ring)
    version = registry.register({"a": 1}, metrics={"f1": 0.2}, data_summary={}).version
    path = Path(url, version, "manifest.json")
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"f1": 0.2', '"f1": 0.9'))
    with pytest.raises(VerificationError, match="bad signature"):
        registry.manifest(version)
    # Both signatures when both keys are set, each checked.
    both = Registry(url, "k", publisher=keys.publisher, keyring=keys.ring)
    manifest = both.register({"a": 2}, metrics={}, data_summary={})
    assert manifest.signature and manifest.signed_by
    assert both.verify(manifest.version) == manifest
    with pytest.raises(VerificationError, match="signature does not match"):
        Registry(url, "other", keyring=keys.ring).verify(manifest.version)


def test_readers_of_the_command_log_warn_at_start_when_nothing_authenticates_commands(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = tmp_path / "keyring"
    keyring.write_text(keys.operator_pub.line() + "\n")
    plain = load_settings(bootstrap="127.0.0.1:1")  # never reached: the follower is stopped before it reads
    cases = [
        (plain, True),
        (plain.model_copy(update={"signing_key": SecretStr("k")}), False),
        (plain.model_copy(update={"keys": KeySettings(keyring_file=keyring)}), False),
        (plain.model_copy(update={"keys": KeySettings(keyring=[keys.operator_pub.line()])}), False),
    ]
    for settings, warned in cases:
        assert authenticated(settings) is not warned
        caplog.clear()
        follower = Follower(settings, "test-group")
        follower.stop_event.set()
        with caplog.at_level(logging.WARNING, logger="services.deployment.follower"):
            follower.run()
        assert (UNAUTHENTICATED in caplog.text) is warned
    assert "commands are not authenticated" in UNAUTHENTICATED
