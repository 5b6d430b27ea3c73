"""Create the contract's topics, idempotently, and check the command log's layout.

The command topic is the deployment audit log: it has exactly one partition, so that its offsets give one
total order of commands whatever client writes them (the CLI hashes keys with murmur2, a stock librdkafka
client with crc32, kcat or a Go client with something else again). Kafka cannot shrink a topic, so a
command topic created with more partitions is refused by every reader with one line saying what to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, TopicMetadata

from schemas import topics as contract
from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.kafka.retry import retry

log = logging.getLogger(__name__)

#: Partitions of the command topic: one, so that its offsets are the order of the commands.
COMMAND_LOG_PARTITIONS = 1


def check_command_log(topic: str, partitions: int) -> None:
    """Raise :class:`KafkaClientError` (one line, what to do) unless ``topic`` has exactly one partition."""
    if partitions != COMMAND_LOG_PARTITIONS:
        raise KafkaClientError(
            f"{topic} has {partitions} partitions, but the command log needs exactly one (one order for "
            f"every command) and Kafka cannot shrink a topic: delete it and run `modelwatch topics create` "
            f"again, or use a new MODELWATCH_TOPIC_PREFIX"
        )


def check_command_topic(settings: Settings, timeout: float = 10.0, unreachable_ok: bool = False) -> None:
    """:func:`check_command_log` on the cluster's command topic under ``settings.topic_prefix``; a topic
    that does not exist yet passes (readers wait for it, and ``topics create`` makes it right), and so
    does a cluster that does not answer when ``unreachable_ok`` (a process that waits for it checks again)."""
    topic = contract.MODEL_COMMANDS.name(settings.topic_prefix)
    try:
        meta = kafka.admin(settings).list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        if unreachable_ok:
            return
        raise KafkaClientError(f"cannot read the metadata of {topic}: {exc.args[0].str()}") from exc
    if meta is not None and meta.error is None and meta.partitions:
        check_command_log(topic, len(meta.partitions))


def partitions_of(topic: contract.Topic, partitions: int) -> int:
    """How many partitions ``topic`` gets when the joined topics get ``partitions``."""
    if topic is contract.MODEL_COMMANDS:
        return COMMAND_LOG_PARTITIONS
    return partitions if topic.joined else min(partitions, 3)


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool
    #: Replicas of its first partition, as the metadata lists them once it is there.
    replication: int


#: Asks the cluster for its own ``default.replication.factor`` (CreateTopics with -1, KIP-464).
CLUSTER_DEFAULT = -1


def create_topics(
    settings: Settings, partitions: int = 6, replication: int | None = None, timeout: float = 30.0
) -> list[TopicState]:
    """Create every contract topic under ``settings.topic_prefix``; existing ones are left as they are.

    ``replication`` defaults to the cluster's own ``default.replication.factor`` and ``min.insync.replicas``
    (``modelwatch broker start --nodes 3`` sets 3 and 2), applied by the controller: a count of the brokers
    taken from one broker's metadata is a moment's view, which lists fewer right after a broker joins (a
    broker that has not applied its unfencing yet) and while one is down, and would make replication 1
    topics on a cluster of three without a word. The controller places its replicas on the registered
    brokers, a down one included (its replicas catch up when it returns); where it cannot place as many as
    asked (more than the cluster has), creating fails with Kafka's reason and what to do. A replication
    named here of 3 or more also sets ``min.insync.replicas=2``. Requests, predictions and outcomes get
    ``partitions`` partitions so the monitor's join is co-partitioned; control topics get fewer, and the
    command topic one. An existing command topic with more than one partition is refused
    (:func:`check_command_log`).
    """
    client = kafka.admin(settings)
    try:
        client.list_topics(timeout=timeout)  # one clear line when the cluster is not there at all
    except KafkaException as exc:
        raise KafkaClientError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    wanted = []
    for t in contract.ALL:
        config = {"cleanup.policy": t.cleanup.value}
        if t.retention_ms is not None:
            config["retention.ms"] = str(t.retention_ms)
        if replication is not None and replication >= 3:
            config["min.insync.replicas"] = "2"  # an acked write is on two brokers: one may die
        if t.joined:
            # The broker's clock stamps each message: what event times are judged by (schemas/eventtime.py),
            # not a producer's clock, which may be as wrong as the event's.
            config["message.timestamp.type"] = "LogAppendTime"
        wanted.append(
            NewTopic(
                t.name(settings.topic_prefix),
                num_partitions=partitions_of(t, partitions),
                replication_factor=CLUSTER_DEFAULT if replication is None else replication,
                config=config,
            )
        )
    try:
        states = ensure_topics(settings, wanted, timeout, client)
    except KafkaClientError as exc:
        cause = exc.__cause__  # the refusal, for a tool's hint; ensure_topics serves other callers too
        unplaceable = KafkaError.INVALID_REPLICATION_FACTOR
        if isinstance(cause, KafkaException) and cause.args[0].code() == unplaceable:
            raise KafkaClientError(
                f"{exc}; start the missing brokers, or name a replication the cluster can place "
                f"(modelwatch topics create --replication N)"
            ) from cause
        raise
    commands = contract.MODEL_COMMANDS.name(settings.topic_prefix)
    for state in states:
        if state.name == commands:
            check_command_log(state.name, state.partitions)
    return states


#: CreateTopics errors that a moment cures: the request's broker went away or was retired by the client
#: (librdkafka retires a broker handle that the metadata stops listing, failing what was in flight on it
#: with _DESTROY_BROKER: seen once on a just-started three-broker cluster), or the controller the client
#: knows did not answer in time (a broker paused or overloaded; the next attempt's new client asks the
#: controller the cluster names then).
TRANSIENT_CREATE_ERRORS = frozenset(
    {
        KafkaError._DESTROY_BROKER,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
    }
)


#: How long one CreateTopics attempt may wait (a healthy cluster answers in well under a second).
ATTEMPT_S = 10.0


class _CreateFailed(Exception):
    """Some topics failed to be created with a transient error (:data:`TRANSIENT_CREATE_ERRORS`)."""

    def __init__(self, errors: dict[str, KafkaError]) -> None:
        super().__init__(errors)
        self.errors = errors


def ensure_topics(
    settings: Settings, wanted: list[NewTopic], timeout: float = 30.0, client: AdminClient | None = None
) -> list[TopicState]:
    """Create ``wanted`` where missing (existing topics are left as they are) and return once the cluster's
    metadata shows every one with its partitions: a new topic reaches the metadata cache a moment after
    CreateTopics returns. Used for the contract's topics, the monitor's internal topics and the bench's.

    A transient error (:data:`TRANSIENT_CREATE_ERRORS`) is retried, with backoff and a new client, until
    ``timeout`` has passed; any other error, or a transient one that lasts, raises
    :class:`KafkaClientError`. A topic that a failed attempt created after all is reported as existing
    (``created`` False). ``client``, if given, makes the first attempt (one that has read the metadata)."""
    started = time.monotonic()
    created: dict[str, bool] = {}
    pending = list(wanted)
    current = client if client is not None else kafka.admin(settings)  # a client with nothing queued is falsy

    def attempt(number: int) -> None:
        nonlocal pending, current
        if number > 1:
            # A new client learns the cluster afresh: librdkafka keeps waiting for the controller its
            # metadata names, even one that never answers (a broker paused or stuck), and a broker it
            # has retired (_DESTROY_BROKER) is gone from the old one for good.
            current = kafka.admin(settings)
        # One attempt waits at most ATTEMPT_S, so that a controller that does not answer costs one attempt.
        wait_s = min(ATTEMPT_S, max(1.0, timeout - (time.monotonic() - started)))
        transient: dict[str, KafkaError] = {}
        for name, fut in current.create_topics(pending, request_timeout=wait_s).items():
            try:
                fut.result()
                created[name] = True
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    created[name] = False
                elif error.code() in TRANSIENT_CREATE_ERRORS:
                    transient[name] = error
                else:
                    raise KafkaClientError(f"cannot create topic {name}: {error.str()}") from exc
        pending = [t for t in pending if t.topic in transient]
        if transient:
            raise _CreateFailed(transient)

    def report(number: int, wait_s: float, error: BaseException) -> None:
        assert isinstance(error, _CreateFailed)
        name, first = next(iter(error.errors.items()))
        log.warning(
            "creating topics failed (%s and %d more): %s; trying again in %.1fs",
            name,
            len(error.errors) - 1,
            first.str(),
            wait_s,
        )

    try:
        retry(attempt, retry_on=(_CreateFailed,), retry_max_s=2.0, within_s=timeout, on_retry=report)
    except _CreateFailed as exc:
        name, error = next(iter(exc.errors.items()))
        raise KafkaClientError(
            f"cannot create topic {name}: {error.str()} (still so after {timeout:.0f}s of trying)"
        ) from exc
    deadline = time.monotonic() + timeout
    while True:
        meta = current.list_topics(timeout=timeout)
        if all(t.topic in meta.topics and meta.topics[t.topic].partitions for t in wanted):
            break
        if time.monotonic() > deadline:
            missing = [t.topic for t in wanted if t.topic not in meta.topics]
            raise KafkaClientError(f"topics {', '.join(missing)} did not appear within {timeout:.0f}s")
        time.sleep(0.1)
    return [_state(t.topic, meta.topics[t.topic], created[t.topic]) for t in wanted]


def _state(name: str, topic: TopicMetadata, created: bool) -> TopicState:
    return TopicState(name, len(topic.partitions), created, len(topic.partitions[0].replicas))


def delete_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Delete every contract topic under the prefix, and the monitor's own (``<prefix>monitor-*``: its
    changelogs and repartition topics). Tests clean up with it."""
    client = kafka.admin(settings)
    names = [t.name(settings.topic_prefix) for t in contract.ALL]
    monitors = f"{settings.topic_prefix}monitor-"
    names += [t for t in client.list_topics(timeout=timeout).topics if t.startswith(monitors)]
    for fut in client.delete_topics(names, request_timeout=timeout).values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaClientError(f"cannot delete topics: {exc.args[0].str()}") from exc
