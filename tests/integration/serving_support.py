"""What the prediction service's integration tests share: models trained on a small world, replicas run as
``modelwatch serve`` processes, a request producer, and a reader that collects what the replicas publish."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services import kafka
from services.config import Settings
from services.sandbox.processes import wait_for  # noqa: F401 - re-exported for the tests
from services.sandbox.world import World


def requests_of(world: World, n: int, seed: int, tag: str = "r") -> list[dict[str, Any]]:
    """``n`` valid prediction requests drawn from ``world`` (some with their own k)."""
    # Stamped now: a request whose ts is far from its broker time is dead-lettered (schemas/eventtime.py).
    s = world.sessions(n, seed=seed, candidates=10, start_ms=int(time.time() * 1000), rate_per_s=1000.0)
    return [
        {
            "request_id": f"{tag}-{i}",
            "user_id": user,
            "items": items,
            "ts": int(ts),
            **({"k": 3} if i % 3 == 0 else {}),
        }
        for i, (user, items, ts) in enumerate(zip(s.user_ids, s.candidates, s.ts, strict=True))
    ]


def produce(
    settings: Settings,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Write (key, value) pairs to the request topic, paced at ``rate_per_s`` if given; wait for acks."""
    producer = kafka.producer(settings, **{"message.max.bytes": 1_048_000})  # oversize tests need room
    topic = settings.topic("requests")
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    started, n = time.monotonic(), 0
    for key, value in messages:
        if stop is not None and stop.is_set():
            break
        if rate_per_s is not None:
            ahead = n / rate_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pacing the workload, not waiting for a result
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0 and not errors, errors[:3]
    return n


def encoded(requests: Iterable[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r["user_id"].encode(), orjson.dumps(r)) for r in requests]


@dataclass
class Collected:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class Collector:
    """Reads everything the replicas publish (read_committed), in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = Collected()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.consumer = kafka.consumer(
            settings,
            f"{settings.topic_prefix}test-collector",
            **{"isolation.level": "read_committed"},  # what a downstream reader of --exactly-once sees
        )
        parts = []
        for suffix in ("predictions", "requests.dlq", "model-events"):
            topic = settings.topic(suffix)
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(parts)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        predictions, dlq = self.settings.topic("predictions"), self.settings.topic("requests.dlq")
        while not self.stop_event.is_set():
            batch = self.consumer.consume(2000, timeout=0.1)
            with self.lock:
                for msg in batch:
                    if msg.error() is not None:
                        continue
                    value = orjson.loads(msg.value())
                    topic = msg.topic()
                    if topic == predictions:
                        value["_partition"], value["_offset"] = msg.partition(), msg.offset()
                        self.data.predictions.append(value)
                    elif topic == dlq:
                        value["_key"] = msg.key()
                        self.data.dead.append(value)
                    else:
                        self.data.events.append(value)
        self.consumer.close()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    # -- views ----------------------------------------------------------------------------------------

    def predictions(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.data.predictions)

    def dead(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.data.dead)

    def events(self, event: str | None = None, instance: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e
                for e in self.data.events
                if (event is None or e["event"] == event) and (instance is None or e["instance"] == instance)
            ]

    def answered(self) -> set[str]:
        with self.lock:
            return {p["request_id"] for p in self.data.predictions}

    def duplicates(self) -> int:
        counts = Counter(p["request_id"] for p in self.predictions())
        return sum(c - 1 for c in counts.values())

    def acked(self, command_id: str) -> dict[str, dict[str, Any]]:
        """Instance -> its activated or rejected event for ``command_id``."""
        return {e["instance"]: e for e in self.events() if e.get("command_id") == command_id}

    def serving(self, instance: str) -> list[int]:
        """The partitions in ``instance``'s latest heartbeat."""
        beats = self.events("heartbeat", instance)
        return list(beats[-1].get("partitions", [])) if beats else []


def modelwatch_bin() -> str:
    return str(Path(sys.executable).parent / "modelwatch")


#: Settings every replica in these tests runs with: quick failure detection and heartbeats.
REPLICA_ENV = {
    "MODELWATCH_SERVE__SESSION_TIMEOUT_MS": "6000",  # the broker's smallest allowed session
    "MODELWATCH_SERVE__HEARTBEAT_S": "0.5",
    "MODELWATCH_SERVE__TRANSACTION_TIMEOUT_MS": "6000",
}


class Replica:
    """One ``modelwatch serve`` process; its key=value log goes to a file."""

    def __init__(self, instance: str, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.instance = instance
        self.log_path = log_dir / f"{instance}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [modelwatch_bin(), "serve", "--instance", instance, *args],
            env={**os.environ, **REPLICA_ENV, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """Forwards a local port to the broker: a broker that "appears" when the proxy starts. Clients only
    bootstrap through it; the broker's metadata then sends them to its own address."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server = socket.create_server(("127.0.0.1", port))
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.server.close()


def committed_offsets(settings: Settings, group: str) -> dict[int, int]:
    """The group's committed offset per request partition (read_committed, stable offsets)."""
    c = kafka.consumer(settings, group)
    try:
        topic = settings.topic("requests")
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in parts], 10)}
    finally:
        c.close()


def end_offsets(settings: Settings) -> dict[int, int]:
    c = kafka.consumer(settings, f"{settings.topic_prefix}test-ends")
    try:
        topic = settings.topic("requests")
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()
