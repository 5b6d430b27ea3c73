"""Reading the deployment state from Kafka: one way to open the command log, for everyone.

- :func:`open_command_log`: waits for the command topic, refuses one with more than one partition, and
  assigns its partition from the beginning (no group, nothing committed, so no committed offset can make a
  reader miss the start of the history). The replicas' control thread and the :class:`Follower` use it;
- :class:`Follower`: a thread that reads the command log and the replicas' events to their end, says when it
  has caught up (``ready``), then keeps following: the monitor's view;
- :func:`read_state`: the same in one pass to the topics' current end: the CLI's view;
- :class:`CatchUp`: when a reader has read its partitions to their end as of its start (by offset: a
  ``PARTITION_EOF`` may never come while a partition is written), for the follower and the replicas.

The replicas' events are read from :data:`EVENTS_LOOKBACK_MS` ago (they are kept 30 days and a heartbeat
comes every few seconds): acknowledgements older than that are not shown, the commands always are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.deployment.state import DeploymentState, now_ms
from services.kafka.retry import NotYet, retry
from services.kafka.topics import check_command_log, check_command_topic
from services.registry.keys import keyring_of

log = logging.getLogger(__name__)

#: How far back the replicas' events are read: a day of acknowledgements and heartbeats.
EVENTS_LOOKBACK_MS = 24 * 3600 * 1000


def new_state(settings: Settings) -> DeploymentState:
    """An empty state of the settings' model (``model_name``) that checks commands with the settings'
    keyring (and legacy signing key); a replica missing three heartbeats is not live."""
    key = settings.signing_key.get_secret_value() if settings.signing_key else None
    live_ms = int(3 * settings.serve.heartbeat_s * 1000)
    return DeploymentState(
        key=key,
        live_ms=live_ms,
        keyring=keyring_of(settings),
        model=settings.model_name,
        default_model=settings.default_model,
    )


#: What a replica and the monitor log at start when nothing authenticates the commands they obey.
UNAUTHENTICATED = (
    "commands are not authenticated: no keyring (keys.keyring_file, keys.keyring) and no signing_key "
    "is set, so anyone who may write the command topic can deploy any version"
)


def authenticated(settings: Settings) -> bool:
    """Whether commands are checked at all (a keyring, or the legacy shared key)."""
    return bool(settings.keys.keyring_file or settings.keys.keyring or settings.signing_key)


def open_command_log(
    consumer: Consumer,
    topic: str,
    stop: threading.Event,
    retry_max_s: float,
    on_wait: Callable[[str, float], None],
) -> TopicPartition | None:
    """The command topic's one partition from the beginning, once the topic exists (``on_wait(problem,
    retry_in_s)`` is told each time it does not yet); ``None`` if ``stop`` is set first. Raises
    :class:`KafkaClientError` if the topic has more than one partition: no order of commands exists."""

    def find(_attempt: int) -> TopicPartition:
        meta = consumer.list_topics(topic, timeout=5.0).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise NotYet(meta.error.str() if meta is not None and meta.error else "no partitions")
        check_command_log(topic, len(meta.partitions))
        return TopicPartition(topic, 0, OFFSET_BEGINNING)

    def waiting(_attempt: int, wait_s: float, error: BaseException) -> None:
        on_wait(error.args[0].str() if isinstance(error, KafkaException) else str(error), wait_s)

    return retry(find, retry_on=(KafkaException,), retry_max_s=retry_max_s, on_retry=waiting, stop=stop)


#: What a just-created topic answers until its leader is known: asked again, not an error.
LEADER_RACE = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)


def _events_from(consumer: Consumer, topic: str, since_ms: int) -> list[TopicPartition]:
    """Every partition of the event topic, each at its first event since ``since_ms``, or at its end
    (:data:`OFFSET_END`, made an offset by :meth:`CatchUp.of`) when it has none that recent: what comes
    later is still followed."""
    meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
    if meta is None or meta.error is not None:
        return []  # no event topic (yet): the commands alone
    wanted = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]

    def ask(_attempt: int) -> list[TopicPartition]:
        try:
            return list(consumer.offsets_for_times(wanted, timeout=10.0))
        except KafkaException as exc:  # a fresh topic's leader may not be known yet: ask again
            if exc.args[0].retriable() or exc.args[0].code() in LEADER_RACE:
                raise NotYet(str(exc)) from exc
            raise

    found = retry(ask, retry_on=(), within_s=10.0, every_s=0.1)
    assert found is not None  # no stop event: only an answer or an error ends the retries
    for tp in found:
        if tp.offset < 0:  # nothing that recent in this partition
            tp.offset = OFFSET_END
    return found


class CatchUp:
    """The partitions still to be read to their end as of the start, each with that end (its high
    watermark when reading started): the state has caught up once every message before it was read.

    A ``PARTITION_EOF`` alone cannot tell that: librdkafka signals it only on a fetch answer with no new
    message for the partition, and the broker answers a fetch as soon as one arrives (or after
    ``fetch.wait.max.ms``, 500 ms). A partition written more often than that, such as the events partition
    that three replicas heartbeating every 0.5 s hash to, can go minutes without one. An EOF still counts
    when it comes: its offset is where the fetch stood, past everything before the end taken at start.
    """

    def __init__(self, ends: dict[tuple[str, int], int]) -> None:
        #: (topic, partition) -> the offset to read up to (exclusive), for those not read that far yet.
        self.ends = ends
        #: (topic, partition) -> the next offset to read, for those of ``ends`` read from yet.
        self.at: dict[tuple[str, int], int] = {}

    @classmethod
    def of(
        cls, consumer: Consumer, starts: list[TopicPartition], stop: threading.Event | None = None
    ) -> CatchUp:
        """The ends of ``starts`` now. A start at :data:`OFFSET_END` becomes that end, an offset: an event
        written between now and the first fetch is read, not passed over. A broker that does not answer
        (a restart, a leader election) is asked again, saying so, until ``stop`` is set (then nothing is
        left to read); an error that asking again cannot mend, such as a refused authorization, is raised."""

        def now(_attempt: int) -> list[tuple[int, int]]:
            try:
                return [kafka.watermarks(consumer, tp.topic, tp.partition) for tp in starts]
            except KafkaClientError as exc:
                if isinstance(exc.__cause__, NotYet):
                    raise NotYet(str(exc)) from exc
                raise

        def waiting(_attempt: int, wait_s: float, error: BaseException) -> None:
            log.warning("%s (retry in %.1fs)", error, wait_s)

        offsets = retry(now, retry_on=(), stop=stop, on_retry=waiting)
        ends = {}
        for tp, (low, high) in zip(starts, offsets or [], strict=False):
            if tp.offset == OFFSET_END:
                tp.offset = high
            start = low if tp.offset == OFFSET_BEGINNING else max(tp.offset, low)
            if high > start:  # something to read before the end; an empty or unread-to partition is not
                ends[(tp.topic, tp.partition)] = high
        return cls(ends)

    @property
    def done(self) -> bool:
        return not self.ends

    def passed(self, msg: Any) -> None:
        """Take note of a message read (read up to its offset + 1) or of a ``PARTITION_EOF`` (read up to the
        offset it names)."""
        err, offset = msg.error(), msg.offset()
        if offset is None or (err is not None and err.code() != KafkaError._PARTITION_EOF):
            return
        self.reached(msg.topic(), msg.partition(), offset if err is not None else offset + 1)

    def reached(self, topic: str, partition: int, next_offset: int) -> None:
        key = (topic, partition)
        end = self.ends.get(key)
        if end is None:
            return
        if next_offset >= end:
            del self.ends[key]
            self.at.pop(key, None)
        else:
            self.at[key] = next_offset


class Follower(threading.Thread):
    """Follows the command log and the replicas' events into a :class:`DeploymentState`."""

    def __init__(self, settings: Settings, group: str, events: bool = True) -> None:
        super().__init__(name="deployment-follower", daemon=True)
        self.settings = settings
        self.group = group  # never committed (assign): the name only has to match the reader's ACL prefix
        self.events = events
        self.state = new_state(settings)
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once both logs were read to their end at start
        self.stop_event = threading.Event()
        self.error: Exception | None = None
        self._catch_up: CatchUp | None = None  # what is left to read before ``ready``

    @property
    def behind(self) -> dict[tuple[str, int], tuple[int | None, int]]:
        """The (topic, partition) still to be read to their end as of the start before ``ready``, each with
        (the next offset to read, or None before the first; that end): says what holds it back."""
        with self.lock:
            catch_up = self._catch_up
            if catch_up is None:
                return {}
            return {key: (catch_up.at.get(key), end) for key, end in catch_up.ends.items()}

    def stop(self) -> None:
        self.stop_event.set()
        if self.ident is not None:
            self.join(timeout=10)

    def run(self) -> None:
        if not authenticated(self.settings):
            log.warning(UNAUTHENTICATED)
        consumer = kafka.consumer(
            self.settings, self.group, **{"enable.partition.eof": True}
        )  # EOF tells when the history has caught up
        try:
            commands_topic = self.settings.topic("model-commands")

            def waiting(problem: str, retry_in: float) -> None:
                log.warning("waiting for %s: %s (retry in %.1fs)", commands_topic, problem, retry_in)

            log_partition = open_command_log(
                consumer, commands_topic, self.stop_event, self.settings.serve.retry_max_s, waiting
            )
            if log_partition is None:
                return
            parts = [log_partition]
            if self.events:
                since = now_ms() - EVENTS_LOOKBACK_MS
                parts += _events_from(consumer, self.settings.topic("model-events"), since)
            catch_up = CatchUp.of(consumer, parts, self.stop_event)
            log.debug(
                "reading %s to %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in parts),
                ", ".join(f"{t}[{p}]@{end}" for (t, p), end in sorted(catch_up.ends.items())) or "nothing",
            )
            with self.lock:
                self._catch_up = catch_up
            consumer.assign(parts)
            while not self.stop_event.is_set():
                batch = consumer.consume(500, timeout=0.2)
                with self.lock:
                    for msg in batch:
                        err = msg.error()
                        if err is None:
                            self._feed(msg, commands_topic)
                        elif err.code() != KafkaError._PARTITION_EOF:
                            log.warning("reading %s: %s", msg.topic(), err.str())
                        if not catch_up.done:
                            catch_up.passed(msg)
                if catch_up.done and not self.ready.is_set():
                    log.info("deployment state caught up: commanded %s", self.state.commanded)
                    self.ready.set()
        except Exception as exc:  # the owner must learn of it, not die of a background thread
            self.error = exc
            log.exception("the deployment follower stopped")
        finally:
            consumer.close()

    def _feed(self, msg: Any, commands_topic: str) -> None:
        if msg.topic() == commands_topic:
            ignored = len(self.state.history.ignored)
            self.state.feed_command_raw(msg.value(), msg.offset())
            if len(self.state.history.ignored) > ignored:  # not another model's: refused
                _, why = self.state.history.ignored[-1]
                log.warning("ignored a model command: %s", why)
        else:
            self.state.feed_event_raw(msg.value())


def read_state(
    settings: Settings, timeout: float = 10.0, events_since_ms: int | None = None
) -> DeploymentState:
    """The deployment state as the topics hold it now: every command, and the replicas' events since
    ``events_since_ms`` (default: :data:`EVENTS_LOOKBACK_MS` ago)."""
    state = new_state(settings)
    check_command_topic(settings, timeout)
    for _key, value, _ts in kafka.read_topic(settings, settings.topic("model-commands"), timeout=timeout):
        state.feed_command_raw(value)
    since = events_since_ms if events_since_ms is not None else now_ms() - EVENTS_LOOKBACK_MS
    try:
        events = kafka.read_topic(settings, settings.topic("model-events"), timeout=timeout, since_ms=since)
    except KafkaClientError as exc:  # no event topic: the commands alone still say what was commanded
        log.warning("no replica events: %s", exc)
        events = []
    for _key, value, _ts in events:
        state.feed_event_raw(value)
    return state


__all__ = [
    "EVENTS_LOOKBACK_MS",
    "UNAUTHENTICATED",
    "CatchUp",
    "Follower",
    "authenticated",
    "new_state",
    "open_command_log",
    "read_state",
]
