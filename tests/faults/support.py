"""What the fault tests share beyond the serving and monitor suites' helpers: models and versions, counting
what was answered, reading a cluster's state, and the memory the processes take."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource

from services import kafka
from services.config import Settings, load_settings
from services.deployment import commands
from services.registry import Registry
from services.sandbox.processes import wait_for

#: The repository root: replicas import test-only models (tests/faults/slow_model.py) from it.
ROOT = Path(__file__).resolve().parents[2]

#: Key for the tests that run with signed commands and manifests.
KEY = "fault-suite-signing-key"

#: The monitor of the broker fault tests: short windows and quick failure detection, so a run spends its
#: time on the fault.
BROKER_FAULT_MONITOR = {
    "label_window_s": 60,
    "count_window": 500,
    "time_window_s": 30,
    "emit_every_n": 200,
    "emit_every_s": 1.0,
    "commit_interval_s": 0.5,
    "session_timeout_s": 6,
}


def register(settings: Settings, model: Any, key: str | None = None) -> str:
    return Registry(settings.registry, signing_key=key).register(model, metrics={}, data_summary={}).version


def deploy(
    settings: Settings, version: str, key: str | None = None, reason: str = "fault test"
) -> dict[str, Any]:
    command = commands.make("deploy", version, reason, key=key, issued_by="fault-suite")
    commands.publish(settings, command)
    return command


def tally(predictions: Iterable[dict[str, Any]], sent: Iterable[str]) -> tuple[int, int, int]:
    """(answered, lost, duplicated) of the requests ``sent``: distinct ids answered, ids never answered,
    answers beyond the first."""
    counts = Counter(p["request_id"] for p in predictions)
    wanted = set(sent)
    answered = sum(1 for rid in wanted if counts.get(rid))
    duplicated = sum(c - 1 for rid, c in counts.items() if rid in wanted)
    return answered, len(wanted) - answered, duplicated


def acked_by(events: list[dict[str, Any]], command_id: str, event: str = "activated") -> set[str]:
    """Instances that answered ``command_id`` with ``event``."""
    return {e["instance"] for e in events if e.get("command_id") == command_id and e["event"] == event}


def topic_layout(settings: Settings, suffixes: Iterable[str]) -> dict[str, tuple[int, int, str | None]]:
    """Per topic: (partitions, replicas, min.insync.replicas)."""
    client = kafka.admin(settings)
    names = [settings.topic(s) for s in suffixes]
    # Each broker learns of new topics from the metadata log a moment after the controller: ask until
    # the one answering knows them all.
    meta = wait_for(
        lambda: (
            (m := client.list_topics(timeout=10))
            and all(
                n in m.topics
                # a broker that has just applied a topic may still list a partition with fewer replicas
                and all(len(p.replicas) == min(len(m.brokers), 3) for p in m.topics[n].partitions.values())
                for n in names
            )
            and m
        ),
        30,
        "every broker to know the new topics",
    )
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]

    def described() -> dict[str, Any] | None:
        # DescribeConfigs may reach a broker that has not applied the new topics yet: ask again.
        try:
            return {r.name: f.result() for r, f in client.describe_configs(resources).items()}
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            return None

    configs = wait_for(described, 30, "every broker to describe the new topics")
    out = {}
    for n in names:
        parts = meta.topics[n].partitions
        min_isr = configs[n].get("min.insync.replicas")
        out[n] = (len(parts), len(parts[0].replicas), min_isr.value if min_isr else None)
    return out


def partitions_without(settings: Settings, node_id: int) -> list[str]:
    """Replicated partitions whose in-sync replicas do not (yet) include ``node_id``."""
    meta = kafka.admin(settings).list_topics(timeout=10)
    missing = []
    for name, topic in meta.topics.items():
        for p, part in topic.partitions.items():
            if node_id in part.replicas and node_id not in part.isrs:
                missing.append(f"{name}[{p}]")
    return missing


def led_by(settings: Settings, node_id: int) -> list[str]:
    """Partitions of the test's topics whose leader is ``node_id``."""
    meta = kafka.admin(settings).list_topics(timeout=10)
    return [
        f"{name}[{p}]"
        for name, topic in meta.topics.items()
        if name.startswith(settings.topic_prefix)
        for p, part in topic.partitions.items()
        if part.leader == node_id
    ]


def leader_of(settings: Settings, suffix: str, partition: int = 0) -> int:
    meta = kafka.admin(settings).list_topics(timeout=10)
    return int(meta.topics[settings.topic(suffix)].partitions[partition].leader)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def repo_env() -> dict[str, str]:
    """Environment that lets a child process import this repository's test modules."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def log_events(text: str, event: str) -> list[str]:
    """The key=value log lines of ``event``."""
    return [
        line for line in text.splitlines() if f"event={event} " in line or line.endswith(f"event={event}")
    ]


def print_tails(*logs: tuple[str, str], lines: int = 40) -> None:
    """The end of each (name, text) log, printed: pytest shows it when the test fails."""
    for name, text in logs:
        print(f"----- {name} (last {lines} lines) -----")
        print("\n".join(text.splitlines()[-lines:]))


def fresh_world(bootstrap: str, monkeypatch: Any) -> Settings:
    """Settings under a new topic prefix on ``bootstrap``, exported so child processes see the same."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("MODELWATCH_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("MODELWATCH_TOPIC_PREFIX", prefix)
    return load_settings(bootstrap=bootstrap, topic_prefix=prefix)


def latest_totals(settings: Settings) -> dict[str, int]:
    """Per version, the most labelled requests any metrics event has counted so far."""
    from tests.integration.monitor_support import read_events

    totals: dict[str, int] = {}
    for m in read_events(settings, "metrics", "metrics"):
        totals[m["model_version"]] = max(totals.get(m["model_version"], 0), m["total"])
    return totals
