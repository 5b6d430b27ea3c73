"""The benchmark's world: a broker, topics under a prefix of its own, a registry, and child processes.

Every run uses a fresh prefix ``bench-<id>.`` (areas below it: ``serve.``, ``mon.``, ``live.``), so two
runs, or a run and a deployment, never read each other's messages; at the end every topic and consumer
group under the prefix is deleted, the monitor's internal topics included. Models live in a temporary
registry that goes with the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.kafka.topics import create_topics, ensure_topics
from services.sandbox.broker import LocalCluster
from services.sandbox.processes import ManagedProcess

PARTITIONS = 6


class ModuleProcess(ManagedProcess):
    """A ``python -m <module> <args>`` child (the benchmark's own contenders), managed like the
    ``modelwatch`` children: output in ``log_path``, SIGTERM to stop, SIGKILL as a crash."""

    def __init__(
        self, name: str, module: str, args: list[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )


class Rig:
    """One benchmark run's broker, prefix, registry and working directory."""

    def __init__(
        self, base: Settings, workdir: Path | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.base = base
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.run_id}."
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="modelwatch-bench-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = str(self.workdir / "registry")
        self.say = say
        self.cluster: LocalCluster | None = None
        self.started_broker = False
        self.processes: list[ManagedProcess] = []

    # -- broker ----------------------------------------------------------------------------------------

    def start_broker(self) -> str:
        """The named cluster, or the local broker (started if it is not running)."""
        if self.base.bootstrap is None:
            self.cluster = LocalCluster(self.base.broker)
            self.started_broker = not all(n.running for n in self.cluster.nodes)
            self.cluster.start(say=self.say)
        kafka.wait_for_cluster(self.base)
        return self.base.bootstrap_servers

    # -- areas -----------------------------------------------------------------------------------------

    def settings(self, area: str, **serve: object) -> Settings:
        """Settings for one area of the run: its own prefix, the run's registry, ``serve`` overrides."""
        settings = self.base.model_copy(
            update={
                "bootstrap": self.base.bootstrap_servers,
                "topic_prefix": f"{self.prefix}{area}.",
                "registry": self.registry,
            }
        )
        if serve:
            settings = settings.model_copy(update={"serve": settings.serve.model_copy(update=serve)})
        return settings

    def create(self, settings: Settings, extra: Sequence[str] = ()) -> None:
        """The contract's topics under the area's prefix, plus ``extra`` topics (full names)."""
        create_topics(settings, partitions=PARTITIONS)
        if extra:
            create_plain_topics(settings, extra)

    def env(self, settings: Settings) -> dict[str, str]:
        """What a child needs to see the same world."""
        return {
            "MODELWATCH_BOOTSTRAP": settings.bootstrap_servers,
            "MODELWATCH_TOPIC_PREFIX": settings.topic_prefix,
            "MODELWATCH_REGISTRY": settings.registry,
        }

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def serve(
        self, settings: Settings, instance: str, *args: str, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """``modelwatch serve`` as a child process."""
        proc = ManagedProcess(
            instance,
            ["serve", "--instance", instance, *args],
            self.log_path(instance),
            {**self.env(settings), **(env or {})},
        )
        self.processes.append(proc)
        return proc

    def module(self, name: str, module: str, args: list[str], settings: Settings) -> ManagedProcess:
        proc = ModuleProcess(name, module, args, self.log_path(name), self.env(settings))
        self.processes.append(proc)
        return proc

    def command(
        self, name: str, args: list[str], settings: Settings, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Any ``modelwatch`` command as a child process."""
        proc = ManagedProcess(name, args, self.log_path(name), {**self.env(settings), **(env or {})})
        self.processes.append(proc)
        return proc

    # -- the end -----------------------------------------------------------------------------------------

    def close(self, keep_files: bool = False) -> None:
        """Stop what is still running, delete the run's topics and groups, and its files."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(20)
        self.processes.clear()
        with contextlib.suppress(KafkaClientError, KafkaException):
            delete_prefixed(self.base, self.prefix)
        if self._own_dir and not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.cluster is not None and self.started_broker:
            self.cluster.stop()


#: Output topics are stamped by the broker when it appends a message, not by the producer when Python hands
#: it over: a producer's timestamps would time the Python loop filling librdkafka's queue, not delivery.
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


def create_plain_topics(settings: Settings, names: Sequence[str], timeout: float = 30.0) -> None:
    """Topics outside the contract (the contenders' outputs), partitioned like the request topic."""
    wanted = [
        NewTopic(name, num_partitions=PARTITIONS, replication_factor=1, config=dict(APPEND_TIME))
        for name in names
    ]
    ensure_topics(settings, wanted, timeout)


def stamp_on_append(settings: Settings, topics: Sequence[str], timeout: float = 30.0) -> None:
    """Switch existing topics (the run's own) to broker append-time timestamps."""
    client = kafka.admin(settings)
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in APPEND_TIME.items()
            ],
        )
        for name in topics
    ]
    for resource, fut in client.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            raise KafkaClientError(f"cannot configure {resource.name}: {exc.args[0].str()}") from exc


def delete_prefixed(settings: Settings, prefix: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic and consumer group whose name starts with ``prefix``; return the topics."""
    client = kafka.admin(settings)
    topics = [t for t in client.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    if topics:
        for fut in client.delete_topics(topics, request_timeout=timeout).values():
            with contextlib.suppress(KafkaException):
                fut.result()
    with contextlib.suppress(KafkaException):
        listed = client.list_consumer_groups(request_timeout=timeout).result()
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
        if groups:
            for fut in client.delete_consumer_groups(groups, request_timeout=timeout).values():
                with contextlib.suppress(KafkaException):
                    fut.result()
    return topics


def delete_group(settings: Settings, group: str, timeout: float = 30.0) -> None:
    """Forget a consumer group's offsets (its members must have left), so its next member starts over."""
    client = kafka.admin(settings)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.delete_consumer_groups([group], request_timeout=10)[group].result()
            return
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return
            # NON_EMPTY_GROUP: a member that was just stopped has not left yet.
            if time.monotonic() > deadline:
                raise KafkaClientError(f"cannot delete consumer group {group}: {exc.args[0].str()}") from exc
        time.sleep(0.2)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The high watermark of every partition of ``topic``."""
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}bench-probe")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: kafka.watermarks(consumer, topic, p)[1] for p in meta.partitions}
    finally:
        consumer.close()


def caught_up(settings: Settings, group: str, topic: str, timeout: float) -> None:
    """Wait until ``group`` has committed every message now in ``topic``: a replica that has worked off
    its backlog, so what is measured next is not queued behind it."""
    ends = OffsetProbe(settings)
    committed = OffsetProbe(settings, group)
    try:
        target = ends.ends(topic)
        deadline = time.monotonic() + timeout
        while True:
            done = committed.committed(topic, list(target))
            if all(done.get(p, 0) >= o for p, o in target.items()):
                return
            if time.monotonic() > deadline:
                behind = sum(max(0, o - done.get(p, 0)) for p, o in target.items())
                raise TimeoutError(
                    f"{group} is still {behind} messages behind on {topic} after {timeout:.0f}s"
                )
            time.sleep(0.1)  # offsets are committed every serve.commit_interval_ms
    finally:
        ends.close()
        committed.close()


class OffsetProbe:
    """Cheap progress readings: a topic's end offsets, a group's committed offsets (no group is joined)."""

    def __init__(self, settings: Settings, group: str | None = None) -> None:
        self.consumer = kafka.consumer(settings, group or f"{settings.topic_prefix}bench-probe")

    def ends(self, topic: str) -> dict[int, int]:
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: kafka.watermarks(self.consumer, topic, p)[1] for p in meta.partitions}

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        got = self.consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in got}

    def close(self) -> None:
        self.consumer.close()
