"""What the monitor reads of its own outputs' topics: the deployment history and the alerts it sent.

The command follower reads the whole command topic from the beginning on each start (the topic is small:
one command per deploy or rollback) and then follows it, with a plain consumer that assigns itself all
partitions and commits nothing, so no consumer-group offset can make it miss the start of the history.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from schemas import codec
from schemas.errors import ContractError
from services import kafka
from services.config import Settings
from services.deployment.commands import History
from services.kafka.topics import check_command_log, check_command_topic

log = logging.getLogger(__name__)


class CommandFollower:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("model-commands")
        key = settings.signing_key.get_secret_value() if settings.signing_key else None
        self._history = History(key=key)
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once the history has caught up with the topic's end at start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="command-follower", daemon=True)
        self.error: Exception | None = None

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        """Start following; raises :class:`KafkaClientError` at once if the command topic has more than one
        partition (the worker stops: no order of commands exists then)."""
        check_command_topic(self.settings)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def applied(self) -> list[dict[str, Any]]:
        """A copy of the applied commands, in order."""
        with self._lock:
            return list(self._history.applied)

    def _run(self) -> None:
        consumer = kafka.consumer(
            self.settings,
            # Never committed (assign below): the name only has to fall under the monitor's ACL prefix.
            f"{self.settings.topic_prefix}monitor-history",
            **{"enable.partition.eof": True},  # tells when the history has caught up
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=30)
            partitions = sorted(meta.topics[self.topic].partitions)
            check_command_log(self.topic, len(partitions))
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            behind = set(partitions)
            while not self._stop.is_set():
                batch = consumer.consume(500, timeout=0.2)
                with self._lock:
                    for msg in batch:
                        err = msg.error()
                        if err is None:
                            if not self._history.feed_raw(msg.value()):
                                _, why = self._history.ignored[-1]
                                log.warning("ignored a model command: %s", why)
                        elif err.code() == KafkaError._PARTITION_EOF:
                            behind.discard(msg.partition())
                        else:
                            log.warning("reading %s: %s", self.topic, err.str())
                if not behind and not self.ready.is_set():
                    log.info("deployment history caught up: active version %s", self._history.active_version)
                    self.ready.set()
        except Exception as exc:  # the worker must learn of it, not die of a background thread
            self.error = exc
            log.exception("the command follower stopped")
        finally:
            consumer.close()


def published_alerts(settings: Settings, timeout: float = 30.0) -> set[tuple[str, str]]:
    """Every (alert_id, state) on the alert topic now: transitions a restarted worker must not repeat."""
    out: set[tuple[str, str]] = set()
    # Read by assignment, never committed; the group name only has to fall under the monitor's ACL prefix.
    group = {"group.id": f"{settings.topic_prefix}monitor-history"}
    for _key, value, _ts in kafka.read_topic(settings, settings.topic("alerts"), timeout=timeout, **group):
        try:
            alert = codec("alert").decode(value)
        except ContractError:
            continue
        out.add((alert["alert_id"], alert["state"]))
    return out
