"""Who may write commands: a SASL/SCRAM broker with ACLs refuses the storefront principal."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from schemas import codec, load_example
from schemas.errors import CommandError
from services import kafka
from services.config import BrokerSettings, Settings, load_settings
from services.deployment import commands
from services.kafka import acls
from services.kafka.topics import create_topics
from services.sandbox.broker import LocalCluster
from services.sandbox.listeners import anonymous_super_user_exposure

PORT = int(os.environ.get("MODELWATCH_TEST_SECURE_PORT", "39092"))


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    data = tmp_path_factory.mktemp("secure-broker")
    users = acls.ensure_users(data)
    cluster = LocalCluster(BrokerSettings(port=PORT, data_dir=Path(data)), scram_users=users)
    try:
        yield cluster.start(), users
    finally:
        cluster.stop()


def as_user(bootstrap: str, users: dict[str, str], user: str) -> Settings:
    return load_settings(
        bootstrap=bootstrap,
        topic_prefix="sec.",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=user,
        sasl_password=users[user],
    )


def produce(settings: Settings, suffix: str, value: bytes) -> Any:
    """Produce one message and return the delivery error (None when written)."""
    result: list[Any] = []
    p = kafka.producer(settings)
    p.produce(settings.topic(suffix), value=value, on_delivery=lambda err, _msg: result.append(err))
    p.flush(15)
    assert result, "no delivery report"
    return result[0]


def test_only_operators_and_the_monitor_may_write_commands(
    secure_cluster: tuple[str, dict[str, str]],
) -> None:
    bootstrap, users = secure_cluster
    admin = as_user(bootstrap, users, "admin")
    create_topics(admin)
    assert acls.apply_acls(admin) == acls.apply_acls(admin)  # idempotent

    storefront = as_user(bootstrap, users, "storefront")
    request = codec("prediction-request").encode(load_example("prediction-request"))
    assert produce(storefront, "requests", request) is None
    assert produce(storefront, "outcomes", codec("outcome").encode(load_example("outcome"))) is None

    command = commands.make("deploy", "v-evil", "storefront tries to deploy")
    err = produce(storefront, "model-commands", codec("model-command").encode(command))
    assert err is not None and err.name() == "TOPIC_AUTHORIZATION_FAILED"
    with pytest.raises(CommandError):
        commands.publish(storefront, command)

    for role in ("operator", "monitor"):
        allowed = commands.make("deploy", "v1", f"{role} deploys")
        commands.publish(as_user(bootstrap, users, role), allowed)
    history = commands.read_history(as_user(bootstrap, users, "operator"))
    assert [c["issued_by"] if "issued_by" in c else c["reason"] for c in history.applied] == [
        "operator deploys",
        "monitor deploys",
    ]
    assert "v-evil" not in {c["model_version"] for c in history.applied}


def test_a_wrong_password_is_refused(secure_cluster: tuple[str, dict[str, str]]) -> None:
    bootstrap, users = secure_cluster
    intruder = as_user(bootstrap, {**users, "storefront": "guess"}, "storefront")
    errors: list[Any] = []
    p = kafka.producer(intruder, error_cb=errors.append)
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        p.poll(0.2)
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION


def outside_address() -> str | None:
    """This host's address on a route out (not loopback), or ``None`` when it has none."""
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):  # UDP connect: nothing is sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            host = str(s.getsockname()[0])
        if not host.startswith("127."):
            return host
    return None


def test_the_anonymous_super_user_s_controller_listener_is_reachable_only_from_this_host(
    secure_cluster: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    controller_port = PORT + 1
    properties = next(tmp_path_factory.getbasetemp().glob("secure-broker*/node-1/server.properties"))
    text = properties.read_text()
    assert "super.users=User:admin;User:ANONYMOUS" in text  # the quorum's PLAINTEXT peers need it...
    assert anonymous_super_user_exposure(text) == []  # ...so its listener binds loopback only
    with socket.create_connection(("127.0.0.1", controller_port), timeout=5):
        pass  # the quorum's own address answers
    outside = outside_address()
    if outside is None:
        pytest.skip("this host has no address but loopback: nothing else could reach the controller")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((outside, controller_port), timeout=5).close()
