"""The demo's eyes: a consumer that reads every output topic from where it stood when the demo began.

The demo judges its story only from what this reads, so it shows exactly what an operator tailing the
topics would see (:mod:`services.sandbox.demo`).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from services import kafka
from services.config import Settings

#: The topics (suffixes) the watcher reads.
WATCHED = (
    "predictions",
    "requests.dlq",
    "metrics",
    "alerts",
    "model-commands",
    "model-events",
    "experiments",
)


@dataclass
class Watcher:
    """Reads the demo's output topics from where they stood at the start, in a background thread."""

    settings: Settings
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    predictions: Counter[str] = field(default_factory=Counter)
    #: (version, instance, ts, user) of every prediction, in the order read.
    _made: list[tuple[str, str, int, str]] = field(default_factory=list)
    dead_letters: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.consumer = kafka.consumer(self.settings, group_id=f"{self.settings.topic_prefix}demo-watcher")
        partitions = []
        for suffix in WATCHED:
            topic = self.settings.topic(suffix)
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                partitions.append(TopicPartition(topic, p, hi))
        self.consumer.assign(partitions)  # assign, not subscribe: nothing is committed, no group joins
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        suffix_of = {self.settings.topic(s): s for s in WATCHED}
        while not self._stop.is_set():
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error() is not None or msg.value() is None:
                    continue
                suffix = suffix_of[msg.topic() or ""]
                try:
                    value = orjson.loads(msg.value() or b"")
                except orjson.JSONDecodeError:
                    continue
                with self._lock:
                    if suffix == "predictions":
                        self.predictions[value.get("model_version", "?")] += 1
                        self._made.append(
                            (
                                value.get("model_version", "?"),
                                value.get("instance"),
                                value.get("ts", 0),
                                str(value.get("user_id")),
                            )
                        )
                    elif suffix == "requests.dlq":
                        self.dead_letters += 1
                    else:
                        self.events.setdefault(suffix, []).append(value)

    def of(self, suffix: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            found = list(self.events.get(suffix, []))
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def made(self) -> list[tuple[str, str, int, str]]:
        with self._lock:
            return list(self._made)

    def acks(self, command: dict[str, Any], instances: list[str]) -> dict[str, int] | None:
        """Each instance's activation delay (ms) for ``command``, once all have acknowledged it."""
        got = {
            e["instance"]: e["ts"] - command["ts"]
            for e in self.of("model-events", event="activated", command_id=command["command_id"])
        }
        return got if set(instances) <= set(got) else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()
