"""What the storefront logged, turned back into training data: predictions joined with outcomes.

Each prediction names the user and, in ``scores``, every candidate shown; its outcome (same
``request_id``) names what was bought. Joined, one request becomes one session of interaction rows,
which is how a deployed model is retrained on live traffic.

Requests without an outcome follow the monitor's rule (``monitor.unlabelled``): with ``no_purchase``, a
prediction older than the label window (relative to the newest event read) counts as bought nothing;
younger ones, whose outcome may still come, are left out. With ``drop`` they are all left out. A
request answered twice (a redelivery, or two replicas) counts once, at its first prediction. Events that
break the contract are skipped: the topics are read, never trusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from schemas import codec
from schemas.errors import ContractError, ModelError
from services import kafka
from services.config import Settings
from services.model.interactions import Interactions


def join_logged(
    predictions: Iterable[dict[str, Any]],
    outcomes: Iterable[dict[str, Any]],
    *,
    unlabelled: Literal["no_purchase", "drop"] = "no_purchase",
    label_window_ms: int = 1_800_000,
) -> Interactions:
    """Join decoded prediction and outcome events by ``request_id`` into an interaction log."""
    bought: dict[str, set[str]] = {}
    newest = 0
    for outcome in outcomes:
        bought.setdefault(outcome["request_id"], set(outcome["purchased"]))
        newest = max(newest, int(outcome["ts"]))
    first: dict[str, dict[str, Any]] = {}
    for prediction in predictions:
        first.setdefault(prediction["request_id"], prediction)
        newest = max(newest, int(prediction["ts"]))

    users: list[str] = []
    items: list[str] = []
    labels: list[bool] = []
    ts: list[int] = []
    sessions: list[int] = []
    session = 0
    for request_id, prediction in first.items():
        purchased = bought.get(request_id)
        if purchased is None:
            if unlabelled == "drop" or int(prediction["ts"]) + label_window_ms > newest:
                continue
            purchased = set()
        candidates = list(prediction["scores"])
        if not candidates:
            continue
        n = len(candidates)
        users.extend([prediction["user_id"]] * n)
        items.extend(candidates)
        labels.extend(c in purchased for c in candidates)
        ts.extend([int(prediction["ts"])] * n)
        sessions.extend([session] * n)
        session += 1
    return Interactions(
        np.array(users, dtype=str),
        np.array(items, dtype=str),
        np.array(labels, dtype=bool),
        np.array(ts, dtype=np.int64),
        np.array(sessions, dtype=np.int64),
    )


def _decoded(settings: Settings, suffix: str, event: str, timeout: float) -> list[dict[str, Any]]:
    decode = codec(event).decode
    out = []
    for _key, value, _ts in kafka.read_topic(settings, settings.topic(suffix), timeout=timeout):
        try:
            out.append(decode(value))
        except ContractError:
            continue
    return out


def interactions_from_topics(settings: Settings, timeout: float = 60.0) -> Interactions:
    """Read the prediction and outcome topics to their current end and join the predictions of the
    settings' model (``model_name``; those naming none are the default model's) into a training log."""
    # The settings' model's predictions only: each model learns from what it was asked.
    predictions = [
        p
        for p in _decoded(settings, "predictions", "prediction", timeout)
        if settings.model_of(p) == settings.model_name
    ]
    outcomes = _decoded(settings, "outcomes", "outcome", timeout)
    log = join_logged(
        predictions,
        outcomes,
        unlabelled=settings.monitor.unlabelled,
        label_window_ms=int(settings.monitor.label_window_s * 1000),
    )
    if len(log) == 0:
        raise ModelError(
            f"no labelled requests on {settings.topic('predictions')} joined with "
            f"{settings.topic('outcomes')}: nothing to train on"
        )
    return log
