"""Fixtures shared by every test.

Integration tests use one real Kafka broker for the whole session: the cluster named by
``MODELWATCH_BOOTSTRAP`` if set, else a local test broker on ``MODELWATCH_TEST_BROKER_PORT`` (19092),
reused when it already runs, else started on empty data, and stopped at the end only if this session
started it. Each test gets its own topic prefix, hence its own topics and consumer groups.

``make test`` runs the unit and integration tests in two pytest-xdist workers (``-n 2 --dist loadscope``:
each module on one worker, so its module-scoped fixtures, such as the secure broker on its fixed port, are
made once). Each worker asks for the broker: one starts it under a file lock and the other finds it
running; the controller stops it once every worker is done. The fault suite runs after them, alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from services.config import BrokerSettings, Settings, load_settings
from services.kafka.topics import create_topics, delete_topics
from services.sandbox.broker import LocalCluster
from tests.faults.conftest import FaultLedger

TEST_PORT = int(os.environ.get("MODELWATCH_TEST_BROKER_PORT", "19092"))
TEST_BROKER_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelwatch" / "test-broker"
)

#: Whether the test broker ran when this session (the controller, under xdist) began.
_BROKER_RAN_AT_START = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts or "faults" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def _test_cluster() -> LocalCluster:
    return LocalCluster(BrokerSettings(port=TEST_PORT, data_dir=TEST_BROKER_DIR))


def _running_or_fresh_cluster() -> LocalCluster:
    """The test broker as it runs, or, when stopped, with its old data discarded.

    Old data would pile up (the topics of killed tests, the monitor's internal topics), and a broker loads
    every log before it answers: CI once saw 5,753 logs take 72 s after an unclean stop, and the start
    deadline passed."""
    cluster = _test_cluster()
    if any(n.running for n in cluster.nodes):
        return cluster
    cluster.discard()
    return _test_cluster()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if not _is_worker(config):  # the workers' reports reach the controller, which prints the table
        config.pluginmanager.register(FaultLedger(), "fault-ledger")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _is_worker(session.config) and not os.environ.get("MODELWATCH_BOOTSTRAP"):
        session.config.stash[_BROKER_RAN_AT_START] = all(n.running for n in _test_cluster().nodes)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the test broker if this session started it: here, after every xdist worker has finished."""
    ran_at_start = session.config.stash.get(_BROKER_RAN_AT_START, True)
    if not ran_at_start and not os.environ.get("MODELWATCH_KEEP_TEST_BROKER"):
        cluster = _test_cluster()
        if any(n.running for n in cluster.nodes):
            cluster.stop()


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
def kafka_bootstrap() -> str:
    """The cluster to test against, started if need be (pytest_sessionfinish stops it)."""
    named = os.environ.get("MODELWATCH_BOOTSTRAP")
    if named:
        return named
    TEST_BROKER_DIR.mkdir(parents=True, exist_ok=True)
    # Every xdist worker gets here: the first starts the broker, the others wait and find it running. The
    # cluster is read under the lock, so it sees the process the first one started.
    with FileLock(TEST_BROKER_DIR / "start.lock"):
        return _running_or_fresh_cluster().start()


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
