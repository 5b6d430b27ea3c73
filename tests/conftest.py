"""Fixtures shared by every test.

Integration tests use one real Kafka broker for the whole session: the cluster named by
``MODELWATCH_BOOTSTRAP`` if set, else a local test broker on ``MODELWATCH_TEST_BROKER_PORT`` (19092),
reused when it already runs and stopped at the end only if this session started it. Each test gets its
own topic prefix, hence its own topics and consumer groups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.config import BrokerSettings, Settings, load_settings
from services.kafka.topics import create_topics, delete_topics
from services.sandbox.broker import LocalCluster

TEST_PORT = int(os.environ.get("MODELWATCH_TEST_BROKER_PORT", "19092"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts or "faults" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's modelwatch.toml or registry."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELWATCH_CONFIG", raising=False)
    monkeypatch.setenv("MODELWATCH_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.delenv("MODELWATCH_SIGNING_KEY", raising=False)
    for name in list(os.environ):  # nor the developer's keyring or private keys
        if name.upper().startswith("MODELWATCH_KEYS__"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    named = os.environ.get("MODELWATCH_BOOTSTRAP")
    if named:
        yield named
        return
    data = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelwatch" / "test-broker"
    cluster = LocalCluster(BrokerSettings(port=TEST_PORT, data_dir=data))
    started_here = not all(n.running for n in cluster.nodes)
    bootstrap = cluster.start()
    try:
        yield bootstrap
    finally:
        if started_here and not os.environ.get("MODELWATCH_KEEP_TEST_BROKER"):
            cluster.stop()


@pytest.fixture
def make_settings(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Settings on the test broker under a fresh topic prefix whose topics exist.

    The prefix is also exported as MODELWATCH_TOPIC_PREFIX/BOOTSTRAP so subprocesses see the same world.
    """
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("MODELWATCH_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("MODELWATCH_TOPIC_PREFIX", prefix)
    made: list[Settings] = []

    def factory(partitions: int = 6, **overrides: object) -> Settings:
        settings = load_settings(bootstrap=kafka_bootstrap, topic_prefix=prefix, **overrides)
        if not made:
            create_topics(settings, partitions=partitions)
        made.append(settings)
        return settings

    yield factory
    if made:
        delete_topics(made[0])


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
