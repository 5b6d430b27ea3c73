"""Held-out evaluation, counted exactly as the monitor counts live traffic.

Each held-out session is one request: the model scores its candidates, selects its recommendations with
the request's k, and :func:`schemas.metrics.request_counts` compares them with what was bought. The
counts are summed over requests (micro-average), so the metrics are the monitor's and the registry's
baseline means the same thing as a live window's value.
"""

from __future__ import annotations

import numpy as np

from schemas.metrics import Counts, request_counts
from services.model.interactions import Interactions
from services.model.protocol import Model, Served, served


def held_out_counts(model: Model | Served, log: Interactions, k: int) -> Counts:
    """The item-level counts of ``model`` over every session of ``log``, ``k`` recommendations each
    (a logged session has no request context: a model that takes contexts is given empty ones)."""
    users, candidates, purchased = log.requests()
    scorer = served(model)
    scores = scorer.score_batch(users, candidates)
    picks = scorer.select(scores, [k] * len(users))
    total = Counts()
    for cands, pick, bought in zip(candidates, picks, purchased, strict=True):
        total += request_counts(cands, [cands[i] for i in np.asarray(pick).tolist()], bought)
    return total


def evaluate(model: Model | Served, log: Interactions, k: int) -> dict[str, float | None]:
    """Held-out accuracy, precision, recall and F1 (``None`` where undefined, as in the monitor)."""
    return held_out_counts(model, log, k).as_dict()
