"""The test broker starts on empty data; a running cluster's data is never discarded."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import tests.conftest as suite
from schemas.errors import BrokerError
from services.config import BrokerSettings
from services.sandbox.broker import LocalCluster


def _stopped_cluster_with_data(directory: Path, pid: int) -> Path:
    """A cluster description naming ``pid`` as node 1, with a topic's log and a server log on disk."""
    node = directory / "node-1"
    (node / "data" / "t1234.requests-0").mkdir(parents=True)
    (node / "server.log").write_text("old run\n")
    state = {"nodes": 1, "port": 19092, "cluster_id": "c", "kafka_version": "3.9.1", "pids": {"1": pid}}
    (directory / "cluster.json").write_text(json.dumps(state))
    return node


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_stopped_test_broker_starts_on_empty_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _stopped_cluster_with_data(tmp_path, _dead_pid())
    monkeypatch.setattr(suite, "TEST_BROKER_DIR", tmp_path)
    cluster = suite._running_or_fresh_cluster()
    assert not (node / "data").exists()
    assert (node / "server.log").read_text() == "old run\n"  # the last run's log stays to be read
    assert cluster.cluster_id is None  # so start() formats a new cluster


def test_a_running_cluster_is_neither_reset_nor_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _stopped_cluster_with_data(tmp_path, os.getpid())  # this process stands in for a live broker
    monkeypatch.setattr(suite, "TEST_BROKER_DIR", tmp_path)
    assert suite._running_or_fresh_cluster().cluster_id == "c"
    with pytest.raises(BrokerError, match="is running; stop it"):
        LocalCluster(BrokerSettings(port=19092, data_dir=tmp_path)).discard()
    assert (node / "data" / "t1234.requests-0").exists()
