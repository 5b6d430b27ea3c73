"""A reader of low-volume output topics (metrics, alerts, commands, model events) that keeps every event
with its broker timestamp, from where the topics stood when it started. It assigns partitions itself:
no group is joined, nothing is committed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from services import kafka
from services.config import Settings


@dataclass(frozen=True)
class Seen:
    topic: str  # the suffix, without the prefix
    value: dict[str, Any]
    ts_ms: int  # the message's timestamp


class Tap:
    def __init__(self, settings: Settings, suffixes: Sequence[str]) -> None:
        self.settings = settings
        self.events: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.consumer = kafka.consumer(settings, f"{settings.topic_prefix}bench-tap")
        self._suffix = {settings.topic(s): s for s in suffixes}
        parts = []
        for topic in self._suffix:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                parts.append(TopicPartition(topic, p, kafka.watermarks(self.consumer, topic, p)[1]))
        self.consumer.assign(parts)
        self._thread = threading.Thread(target=self._run, name="bench-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self.consumer.consume(500, timeout=0.1):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    try:
                        value = orjson.loads(msg.value() or b"")
                    except orjson.JSONDecodeError:
                        continue
                    seen = Seen(self._suffix[msg.topic() or ""], value, msg.timestamp()[1])
                    with self._lock:
                        self.events.append(seen)
        finally:
            self.consumer.close()

    def of(self, suffix: str, **match: Any) -> list[Seen]:
        """Events of one topic whose fields equal ``match``, in arrival order."""
        with self._lock:
            found = [e for e in self.events if e.topic == suffix]
        return [e for e in found if all(e.value.get(k) == v for k, v in match.items())]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
