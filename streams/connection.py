"""The monitor's Kafka side: credentials in Faust's form, the joined topics' layout, its own topics.

Plain functions the Faust app (:mod:`streams.app`) calls before it starts: wait for the cluster and the
joined topics (with backoff, so a monitor may start before its broker), check their partition counts,
and create the monitor's internal topics before Faust subscribes to them.

The join no longer needs co-partitioned sources (it repartitions them, :mod:`streams.routing`); equal
partition counts remain the contract, and give the internal topics their count.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types.auth import CredentialsT

from schemas import topics as contract
from schemas.errors import ConfigError, KafkaClientError
from services import kafka
from services.config import Settings
from services.kafka.retry import backoff_s, retry
from services.kafka.topics import ensure_topics

log = logging.getLogger("modelwatch.monitor")


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's form of the Kafka security settings every other client gets from ``services.kafka``."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=settings.ssl_ca_location,
            certfile=settings.ssl_certificate_location,
            keyfile=settings.ssl_key_location,
            password=settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None,
        )
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            ssl_context=context,
            mechanism=settings.sasl_mechanism or "PLAIN",
        )
    return faust.SSLCredentials(context)


def internal_topics(app_id: str) -> dict[str, str]:
    """The monitor's own topics and their cleanup policy."""
    return {
        f"{app_id}-joinable": "delete",
        f"{app_id}-labelled": "delete",
        f"{app_id}-pending-changelog": "compact",
        f"{app_id}-windows-changelog": "compact",
    }


def ensure_internal_topics(
    settings: Settings, app_id: str, partitions: int, replication: int, timeout: float = 30.0
) -> None:
    """Create the monitor's own topics before Faust subscribes to them.

    Faust creates them too, but on a first start it subscribes before the new topics reach the metadata it
    fetched, and then ignores them until its next metadata refresh (minutes): the watch agent would idle.
    """
    wanted = []
    for name, cleanup in internal_topics(app_id).items():
        config = {"cleanup.policy": cleanup}
        if cleanup == "delete":
            config["retention.ms"] = str(24 * 3600 * 1000)  # read within seconds; a day covers an outage
        if replication >= 3:
            config["min.insync.replicas"] = "2"  # as the contract's topics: one broker may die
        wanted.append(
            NewTopic(name, num_partitions=partitions, replication_factor=replication, config=config)
        )
    # The outcomes' dead-letter topic, for a deployment whose contract topics predate it.
    wanted.append(
        NewTopic(
            settings.topic("outcomes.dlq"),
            num_partitions=min(partitions, 3),
            replication_factor=replication,
            config={"cleanup.policy": "delete", "retention.ms": str(contract.OUTCOMES_DLQ.retention_ms)},
        )
    )
    ensure_topics(settings, wanted, timeout)


def source_layout(settings: Settings, timeout: float = 20.0, client: Any = None) -> tuple[int, int]:
    """(partitions, replication) of the joined topics, which share one partition count."""
    meta = (kafka.admin(settings) if client is None else client).list_topics(timeout=timeout)
    counts: dict[str, int] = {}
    replication = 1
    for suffix in ("predictions", "outcomes"):
        name = settings.topic(suffix)
        topic = meta.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            raise KafkaClientError(f"topic {name} does not exist (run `modelwatch topics create`)")
        counts[name] = len(topic.partitions)
        replication = len(topic.partitions[0].replicas)
    if len(set(counts.values())) != 1:
        raise ConfigError(f"predictions and outcomes must have one partition count (the contract): {counts}")
    return next(iter(counts.values())), replication


def wait_for_sources(settings: Settings, retry_max_s: float = 10.0) -> tuple[int, int]:
    """:func:`source_layout`, retried with exponential backoff while the cluster or its topics are not
    there yet, saying so once per attempt: a monitor started before its broker comes up by itself."""
    # A quiet client: its connection failures are reported here, once per attempt, not by librdkafka.
    client = AdminClient(kafka.client_config(settings, log_level=0, error_cb=lambda _e: None))

    def ask(attempt: int) -> tuple[int, int]:
        timeout = min(5.0, 1.0 + backoff_s(attempt, retry_max_s))
        layout = source_layout(settings, timeout=timeout, client=client)
        if attempt > 1:
            log.warning("Kafka answered at %s after %d attempts", settings.bootstrap_servers, attempt)
        return layout

    def waiting(attempt: int, wait_s: float, error: BaseException) -> None:
        problem = error.args[0].str() if isinstance(error, KafkaException) else str(error)
        log.warning(
            "waiting for Kafka at %s (attempt %d, retry in %.1fs): %s",
            settings.bootstrap_servers, attempt, wait_s, problem,
        )  # fmt: skip

    layout = retry(
        ask, retry_on=(KafkaException, KafkaClientError), retry_max_s=retry_max_s, on_retry=waiting
    )
    assert layout is not None  # no stop event: it waits until the sources are there
    return layout
