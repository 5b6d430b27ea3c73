"""The Kafka layer: client configs from settings, the topics of the contract, and who may write them.

- :mod:`services.kafka.client`: the thin layer over confluent-kafka every process uses (its names are
  re-exported here, so ``from services import kafka; kafka.producer(settings)`` reads as it should);
- :mod:`services.kafka.topics`: creating the contract's topics, idempotently, and waiting for them;
- :mod:`services.kafka.acls`: the SCRAM users and ACLs of each role.

Runtime: it may import :mod:`schemas` and :mod:`services.config`, nothing else of modelwatch.
"""

from services.kafka.client import (
    admin,
    client_config,
    consumer,
    producer,
    read_messages,
    read_topic,
    wait_for_cluster,
    watermarks,
)

__all__ = [
    "admin",
    "client_config",
    "consumer",
    "producer",
    "read_messages",
    "read_topic",
    "wait_for_cluster",
    "watermarks",
]
