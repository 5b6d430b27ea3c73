"""Routing a batch of requests to the models a replica serves.

A request names its model in ``model`` (absent: the default model, ``model_name``). :func:`route` scores
each model's requests in one call with that model's active version (and its experiment, if any:
:func:`~services.serving.experiment.score_with_experiment`), and dead-letters, with the model named:

- a request for a model this replica does not serve (``model: this replica does not serve model 'x' (it
  serves home, cart)``), or for one it serves with no version deployed yet: never dropped silently, never
  fatal;
- a request a model failed on, with the version that failed (the monitor counts those).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from services.serving.experiment import predictions_by_version, score_with_experiment
from services.serving.intake import dead_letter
from services.serving.logs import EventLog
from services.serving.slot import ModelSlot


@dataclass
class Routed:
    """One batch scored model by model, position by position (``None`` scores: not answered)."""

    scores: list[Any]
    selected: list[Any]
    versions: list[str]
    models: list[str]
    made_by: Counter[str] = field(default_factory=Counter)  # predictions per version
    failed: int = 0  # requests a model failed on
    unserved: int = 0  # requests for a model not served here, or not deployed yet


def route(
    requests: list[dict[str, Any]],
    sources: list[Message],
    dead: list[tuple[bytes | None, bytes]],
    slots: Mapping[str, ModelSlot],
    default_model: str,
    default_k: int,
    log: EventLog,
) -> Routed:
    """Score each request with the model it names (``slots``: model -> its slot), each model's requests in
    one call; dead-letter (into ``dead``) the requests for a model not served here or not deployed yet, and
    those a model failed on."""
    n = len(requests)
    routed = Routed([None] * n, [None] * n, [""] * n, [""] * n)
    by_model: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        by_model.setdefault(request.get("model") or default_model, []).append(i)
    now_ms = int(time.time() * 1000)
    for model, positions in by_model.items():
        slot = slots.get(model)
        active = slot.active if slot is not None else None
        if active is None:
            why = (
                f"model: no version of model {model!r} is deployed yet (waiting for a deploy)"
                if slot is not None
                else f"model: this replica does not serve model {model!r} (it serves {', '.join(slots)})"
            )
            for i in positions:
                dead.append(dead_letter(sources[i], why, now_ms, model=model))
            routed.unserved += len(positions)
            log.warning("model_not_served", model=model, requests=len(positions))
            continue
        whole = len(positions) == n
        scored, versions = score_with_experiment(
            active, requests if whole else [requests[i] for i in positions], default_k
        )
        routed.made_by.update(predictions_by_version(scored, versions))
        if whole:  # the usual batch is one model's: its results are the batch's, with no per-request copy
            routed.scores, routed.selected, routed.versions, routed.models = (
                scored.scores,
                scored.selected,
                versions,
                [model] * n,
            )
        else:
            for j, i in enumerate(positions):
                routed.scores[i], routed.selected[i] = scored.scores[j], scored.selected[j]
                routed.versions[i], routed.models[i] = versions[j], model
        for j, error in scored.failures:
            # The version that failed: the monitor counts it into that version's error rate.
            dead.append(
                dead_letter(sources[positions[j]], error, now_ms, model_version=versions[j], model=model)
            )
        if scored.failures:
            routed.failed += len(scored.failures)
            log.warning(
                "model_failed", model=model, requests=len(scored.failures), first_error=scored.failures[0][1]
            )
    return routed


__all__ = ["Routed", "route"]
