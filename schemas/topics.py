"""The topics of the contract: which event each carries, how it is keyed, how it is kept.

The table mirrors the README. Names carry a prefix (``rec.`` by default, ``MODELWATCH_TOPIC_PREFIX``) so that
two deployments can share a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Cleanup(StrEnum):
    DELETE = "delete"
    COMPACT = "compact"


@dataclass(frozen=True)
class Topic:
    """One topic of the contract, named without its prefix."""

    suffix: str
    event: str
    key: str
    #: Requests, predictions and outcomes: the storefront's traffic, with the most partitions and broker
    #: timestamps (LogAppendTime) to judge their event times by; the others are small control or output
    #: streams.
    joined: bool
    cleanup: Cleanup = Cleanup.DELETE
    #: Retention in ms; ``None`` keeps the broker default. The command topic is the audit log: forever.
    retention_ms: int | None = None

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.suffix}"


DAY_MS = 24 * 3600 * 1000

REQUESTS = Topic("requests", "prediction-request", "user_id", joined=True, retention_ms=7 * DAY_MS)
PREDICTIONS = Topic("predictions", "prediction", "request_id", joined=True, retention_ms=7 * DAY_MS)
#: What a shadow candidate would have answered (:mod:`services.serving.experiment`): the prediction event,
#: co-partitioned with the requests like the predictions, never read by the storefront.
PREDICTIONS_SHADOW = Topic(
    "predictions.shadow", "prediction", "request_id", joined=True, retention_ms=7 * DAY_MS
)
OUTCOMES = Topic("outcomes", "outcome", "request_id", joined=True, retention_ms=7 * DAY_MS)
METRICS = Topic("metrics", "metrics", "model_version", joined=False, retention_ms=30 * DAY_MS)
ALERTS = Topic("alerts", "alert", "model_version", joined=False, retention_ms=90 * DAY_MS)
MODEL_COMMANDS = Topic("model-commands", "model-command", "model name", joined=False, retention_ms=-1)
MODEL_EVENTS = Topic("model-events", "model-event", "instance", joined=False, retention_ms=30 * DAY_MS)
REQUESTS_DLQ = Topic("requests.dlq", "dead-letter", "the source key", joined=False, retention_ms=30 * DAY_MS)
#: Outcomes the monitor could not use (against the schema, or an implausible ts), with the reason.
OUTCOMES_DLQ = Topic("outcomes.dlq", "dead-letter", "the source key", joined=False, retention_ms=30 * DAY_MS)
#: Where each shadow or canary experiment stands, after each evaluation (:mod:`streams.comparison`).
EXPERIMENTS = Topic("experiments", "experiment", "experiment_id", joined=False, retention_ms=90 * DAY_MS)

ALL: tuple[Topic, ...] = (
    REQUESTS,
    PREDICTIONS,
    OUTCOMES,
    METRICS,
    ALERTS,
    MODEL_COMMANDS,
    MODEL_EVENTS,
    REQUESTS_DLQ,
    OUTCOMES_DLQ,
    EXPERIMENTS,
    PREDICTIONS_SHADOW,
)

BY_SUFFIX = {t.suffix: t for t in ALL}


def resolve(name: str, prefix: str) -> Topic | None:
    """The contract topic behind a full topic name, if any."""
    if name.startswith(prefix):
        return BY_SUFFIX.get(name[len(prefix) :])
    return None
