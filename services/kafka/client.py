"""The thin layer over confluent-kafka: client configs from settings, and the few calls everyone needs.

Every client gets the same bootstrap and security settings, so a cluster with SASL or SSL needs to be
described once, in ``modelwatch.toml`` or ``MODELWATCH_*``.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.errors import KafkaClientError
from services.config import Settings
from services.kafka.retry import NotYet, retry


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings shared by every client, plus ``overrides``."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    if settings.security_protocol != "PLAINTEXT":
        conf["security.protocol"] = settings.security_protocol
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username:
        conf["sasl.username"] = settings.sasl_username
    if settings.sasl_password:
        # Revealed only here, where the client needs it.
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.ssl_ca_location:
        conf["ssl.ca.location"] = settings.ssl_ca_location
    if settings.ssl_certificate_location:
        conf["ssl.certificate.location"] = settings.ssl_certificate_location
    if settings.ssl_key_location:
        conf["ssl.key.location"] = settings.ssl_key_location
    if settings.ssl_key_password:
        conf["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    conf.update(overrides)
    return conf


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def producer(settings: Settings, **overrides: Any) -> Producer:
    """A reliable producer: acks from all in-sync replicas, idempotent so retries add no duplicates."""
    conf = client_config(
        settings,
        **{
            "enable.idempotence": True,  # retries never duplicate or reorder
            "acks": "all",  # a write survives the loss of the leader
            "linger.ms": 5,  # small batches cost little latency and save many requests
            # Java clients, aiokafka and so Faust hash keys with murmur2; librdkafka's default (crc32) would
            # put a prediction and its outcome, keyed by the same request_id, on different partitions.
            "partitioner": "murmur2_random",
            **overrides,
        },
    )
    return Producer(conf)


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    conf = client_config(
        settings,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,  # commit only after the work is done
            "auto.offset.reset": "earliest",  # a new group reads what was written before it joined
            **overrides,
        },
    )
    return Consumer(conf)


def wait_for_cluster(settings: Settings, timeout: float = 30.0) -> dict[int, str]:
    """Block until the cluster answers a metadata request; return its brokers."""
    client = admin(settings)
    deadline = time.monotonic() + timeout

    def ask(_attempt: int) -> dict[int, str]:
        meta = client.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        if not meta.brokers:
            raise NotYet("no brokers in metadata")
        return {b.id: f"{b.host}:{b.port}" for b in meta.brokers.values()}

    try:
        brokers = retry(ask, retry_on=(KafkaException,), within_s=timeout, every_s=0.2)
    except (KafkaException, NotYet) as exc:
        raise KafkaClientError(
            f"no Kafka cluster answered at {settings.bootstrap_servers} within {timeout:.0f}s ({exc})"
        ) from exc
    assert brokers is not None  # no stop event: only an answer or an error ends the retries
    return brokers


_LEADER_RACE = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets of one partition. Right after a topic is created its leader may not be known
    yet (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE): those are retried until ``timeout``."""
    deadline = time.monotonic() + timeout

    def ask(_attempt: int) -> tuple[int, int]:
        try:
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=max(0.5, deadline - time.monotonic())
            )
            return int(lo), int(hi)
        except KafkaException as exc:
            error = exc.args[0]
            if error.retriable() or error.code() in _LEADER_RACE:
                raise NotYet(str(exc)) from exc
            raise KafkaClientError(f"cannot read the offsets of {topic}[{partition}]: {exc}") from exc

    try:
        found = retry(ask, retry_on=(), within_s=timeout, every_s=0.1)
    except NotYet as exc:
        raise KafkaClientError(f"cannot read the offsets of {topic}[{partition}]: {exc}") from exc
    assert found is not None  # no stop event: only an answer or an error ends the retries
    return found


def read_topic(
    settings: Settings, topic: str, timeout: float = 10.0, since_ms: int | None = None, **overrides: Any
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Read a whole topic from the beginning (or from the first message timestamped ``since_ms`` or later)
    to its current end: (key, value, timestamp ms) in order per partition. For small control topics
    (commands, events), not for the request stream."""
    messages = read_messages(settings, topic, timeout, since_ms, **overrides)
    return [(m.key(), m.value(), m.timestamp()[1]) for m in messages]


def read_messages(
    settings: Settings, topic: str, timeout: float = 10.0, since_ms: int | None = None, **overrides: Any
) -> list[Message]:
    """:func:`read_topic`'s messages themselves (their partitions and offsets too)."""
    c = Consumer(
        client_config(
            settings,
            **{
                "group.id": "modelwatch-reader",  # never committed: assign() below, not subscribe()
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **overrides,
            },
        )
    )
    try:
        try:
            meta = c.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise KafkaClientError(f"cannot read {topic}: {exc.args[0].str()}") from exc
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise KafkaClientError(f"topic {topic} does not exist (run `modelwatch topics create`)")
        starts: dict[int, int] = {}
        if since_ms is not None:
            wanted = [TopicPartition(topic, p, since_ms) for p in tmeta.partitions]
            starts = {tp.partition: tp.offset for tp in c.offsets_for_times(wanted, timeout=timeout)}
        ends: dict[int, int] = {}
        for p in tmeta.partitions:
            lo, hi = watermarks(c, topic, p, timeout=timeout)
            start = starts.get(p, lo)
            if start < 0:  # nothing timestamped since_ms or later
                start = hi
            starts[p] = max(start, lo)
            if hi > starts[p]:
                ends[p] = hi
        if not ends:
            return []
        c.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        out: list[Message] = []
        remaining = set(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in c.consume(500, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(msg.partition())
                    continue
                out.append(msg)
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    remaining.discard(partition)
        if remaining:
            raise KafkaClientError(f"timed out reading {topic}")
        return out
    finally:
        c.close()
