"""Fixtures shared by the integration tests: a collector of what the replicas publish, and replicas."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.config import Settings
from tests.integration.serving_support import Collector, Replica


@pytest.fixture
def collector(settings: Settings) -> Iterator[Collector]:
    c = Collector(settings)
    yield c
    c.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start ``modelwatch serve`` processes (instance, extra arguments, extra environment); all are
    stopped at the end of the test."""
    started: list[Replica] = []

    def start(instance: str, *args: str, env: dict[str, str] | None = None) -> Replica:
        replica = Replica(instance, tmp_path, *args, env=env)
        started.append(replica)
        return replica

    yield start
    for r in started:
        r.close()
