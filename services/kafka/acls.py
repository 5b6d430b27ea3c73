"""Who may write what: SCRAM principals and the ACLs that bind them to the contract's topics.

The roles, with the least each needs (topic names are relative to the prefix):

    storefront  writes requests and outcomes; nothing else, in particular not model-commands
    service     reads requests and model-commands; writes predictions, predictions.shadow (a shadow
                candidate's answers), requests.dlq, model-events; its consumer group and transactional
                ids carry the prefix
    monitor     reads predictions, predictions.shadow, outcomes, model-commands, model-events (the
                replicas' acks) and requests.dlq (model failures); writes metrics, alerts, model-commands,
                outcomes.dlq, experiments; owns everything under ``<prefix>monitor`` (the Faust app's
                internal topics and group)
    operator    writes model-commands (deploy, rollback, shadow, canary, promote, abort); reads every
                topic under the prefix

``admin`` is the brokers' own super user. ``modelwatch broker start --secure`` creates the users (with
random passwords, saved 0600 beside the cluster's data) and ``modelwatch acls apply`` writes the ACLs.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings

ROLES = ("admin", "storefront", "service", "monitor", "operator")

R, W, D = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE


def users_file(data_dir: Path) -> Path:
    return data_dir / "scram-users.json"


def ensure_users(data_dir: Path) -> dict[str, str]:
    """The SCRAM users of a secure local cluster (name: password), created on first use."""
    path = users_file(data_dir)
    if path.exists():
        users: dict[str, str] = json.loads(path.read_text())
        return users
    data_dir.mkdir(parents=True, exist_ok=True)
    users = {role: secrets.token_urlsafe(18) for role in ROLES}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(users, f, indent=2)
    return users


def _topic(principal: str, name: str, *ops: AclOperation, prefixed: bool = False) -> list[AclBinding]:
    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    return [
        AclBinding(ResourceType.TOPIC, name, pattern, principal, "*", op, AclPermissionType.ALLOW)
        for op in ops
    ]


def _prefixed(principal: str, kind: ResourceType, name: str, *ops: AclOperation) -> list[AclBinding]:
    return [
        AclBinding(kind, name, ResourcePatternType.PREFIXED, principal, "*", op, AclPermissionType.ALLOW)
        for op in ops
    ]


def bindings(prefix: str) -> list[AclBinding]:
    """Every ACL of the roles above, for topics under ``prefix``."""

    def t(suffix: str) -> str:
        return f"{prefix}{suffix}"

    store, service, monitor, operator = (
        f"User:{r}" for r in ("storefront", "service", "monitor", "operator")
    )
    acl: list[AclBinding] = []
    acl += _topic(store, t("requests"), W, D) + _topic(store, t("outcomes"), W, D)
    acl += _topic(service, t("requests"), R, D) + _topic(service, t("model-commands"), R, D)
    for out in ("predictions", "predictions.shadow", "requests.dlq", "model-events"):
        acl += _topic(service, t(out), W, D)
    acl += _prefixed(service, ResourceType.GROUP, prefix, R, D)
    acl += _prefixed(service, ResourceType.TRANSACTIONAL_ID, prefix, W, D)
    # requests.dlq: model failures count into the error rate; model-events: the replicas' acks.
    sources = (
        "predictions",
        "predictions.shadow",
        "outcomes",
        "model-commands",
        "model-events",
        "requests.dlq",
    )
    for src in sources:
        acl += _topic(monitor, t(src), R, D)
    for out in ("metrics", "alerts", "model-commands", "outcomes.dlq", "experiments"):
        acl += _topic(monitor, t(out), W, D)
    acl += _topic(monitor, t("monitor"), AclOperation.ALL, prefixed=True)
    acl += _prefixed(monitor, ResourceType.GROUP, t("monitor"), AclOperation.ALL)
    acl += _topic(operator, t("model-commands"), W)
    acl += _topic(operator, prefix, R, D, prefixed=True)
    acl += _prefixed(operator, ResourceType.GROUP, prefix, R, D)
    unique = {str(b): b for b in acl}  # DESCRIBE is granted by several rules; the broker wants it once
    return list(unique.values())


def apply_acls(settings: Settings, timeout: float = 30.0) -> int:
    """Create the ACLs for ``settings.topic_prefix`` (idempotent); the settings must be a super user's."""
    client = kafka.admin(settings)
    wanted = bindings(settings.topic_prefix)
    for binding, fut in client.create_acls(wanted, request_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            raise KafkaClientError(f"cannot create ACL {binding}: {exc.args[0].str()}") from exc
    # ACLs reach the brokers' authorizers through the metadata log a moment later; return when they have.
    # None matches any name, principal and host (the type stubs say str).
    anything: Any = None
    everything = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    expected = {str(b) for b in wanted}
    deadline = time.monotonic() + timeout
    while True:
        present = {str(b) for b in client.describe_acls(everything, request_timeout=timeout).result()}
        if expected <= present:
            return len(wanted)
        if time.monotonic() > deadline:
            raise KafkaClientError(f"{len(expected - present)} ACLs were created but not yet visible")
        time.sleep(0.1)
