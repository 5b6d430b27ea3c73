"""The Kafka jars are fetched once, even when two processes start brokers at the same time."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from services.config import BrokerSettings
from services.sandbox.kafka_jars import ensure_jars


def test_two_brokers_starting_at_once_fetch_the_jars_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for ``mvn`` (only the fetch is faked: it is Maven Central, not the broker) logs each
    call and takes a while; two threads ask for the jars together: one fetch, both get the directory."""
    bin_dir, log = tmp_path / "bin", tmp_path / "mvn-calls"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(f"#!/bin/sh\necho called >> {log}\nsleep 0.5\nmkdir -p lib\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = BrokerSettings(jar_cache=tmp_path / "jars")
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(ensure_jars(settings, say=lambda _m: None)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 2 and got[0] == got[1]
    assert log.read_text().splitlines() == ["called"]
