"""Scoring: one model call for a whole batch, with the requests that make the model fail isolated.

The model is asked once per batch (``score_batch`` then ``select``). Its output is checked before anything
is published: one score array per request, one score per candidate, every score a number in [0, 1], every
selected index a candidate. If the call raises or the output is wrong, the batch is bisected: each half is
scored on its own, recursively, so a single poisonous request costs about ``2 log2(n)`` extra calls and
only the requests that fail alone are dead-lettered, with the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas.errors import ModelError


class Scorer(Protocol):
    """What the service needs of a model (:class:`services.model.recommender.Recommender` is one)."""

    def score_batch(
        self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]: ...

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[np.ndarray]: ...


#: Scores are published rounded: six decimals are far finer than any calibration, and half the bytes.
DECIMALS = 6


@dataclass
class Scored:
    """Per request (by position in the batch): its scores and recommended indices, or its error."""

    scores: list[list[float] | None]
    selected: list[list[int] | None]
    failures: list[tuple[int, str]] = field(default_factory=list)


def _checked(
    model: Scorer, users: list[str], candidates: list[list[str]], ks: list[int]
) -> tuple[list[list[float]], list[list[int]]]:
    """Score and select for these requests, or raise if the model fails or answers out of contract."""
    scores = model.score_batch(users, candidates)
    n = len(users)
    if len(scores) != n:
        raise ModelError(f"score_batch returned {len(scores)} score arrays for {n} requests")
    sizes = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=n)
    got = np.fromiter((len(s) for s in scores), dtype=np.int64, count=n)
    if not np.array_equal(sizes, got):
        raise ModelError("score_batch returned a score array whose length is not its request's candidates")
    flat = np.round(np.concatenate(scores).astype(np.float64, copy=False), DECIMALS) if n else np.zeros(0)
    if not np.all((flat >= 0.0) & (flat <= 1.0)):  # NaN fails both comparisons
        raise ModelError("score_batch returned a score outside [0, 1] (or NaN)")
    selected = model.select(scores, ks)
    if len(selected) != n:
        raise ModelError(f"select returned {len(selected)} selections for {n} requests")
    counts = np.fromiter((len(s) for s in selected), dtype=np.int64, count=n)
    picked = np.concatenate(selected).astype(np.int64, copy=False) if n else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(n), counts)
    if np.any(counts > np.asarray(ks)) or np.any((picked < 0) | (picked >= sizes[owner])):
        raise ModelError("select returned more than k indices, or an index outside the candidates")
    # One conversion to Python numbers for the whole batch, then slices per request.
    flat_scores, flat_picked = flat.tolist(), picked.tolist()
    score_ends, pick_ends = np.cumsum(sizes).tolist(), np.cumsum(counts).tolist()
    score_starts, pick_starts = [0, *score_ends[:-1]], [0, *pick_ends[:-1]]
    return (
        [flat_scores[a:b] for a, b in zip(score_starts, score_ends, strict=True)],
        [flat_picked[a:b] for a, b in zip(pick_starts, pick_ends, strict=True)],
    )


def score(model: Scorer, requests: Sequence[dict[str, Any]], default_k: int) -> Scored:
    """Score ``requests`` with ``model``: every request gets scores and a selection, or a failure."""
    n = len(requests)
    users = [r["user_id"] for r in requests]
    candidates = [r["items"] for r in requests]
    ks = [r.get("k", default_k) for r in requests]
    out = Scored(scores=[None] * n, selected=[None] * n)
    _bisect(model, users, candidates, ks, list(range(n)), out)
    return out


def _bisect(
    model: Scorer,
    users: list[str],
    candidates: list[list[str]],
    ks: list[int],
    positions: list[int],
    out: Scored,
) -> None:
    if not positions:
        return
    whole = len(positions) == len(users)
    try:
        scores, selected = _checked(
            model,
            users if whole else [users[i] for i in positions],
            candidates if whole else [candidates[i] for i in positions],
            ks if whole else [ks[i] for i in positions],
        )
    except Exception as exc:  # a model may raise anything: isolate it rather than die of it
        if len(positions) == 1:
            reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            out.failures.append((positions[0], f"model: {reason}"[:2000]))
            return
        half = len(positions) // 2
        _bisect(model, users, candidates, ks, positions[:half], out)
        _bisect(model, users, candidates, ks, positions[half:], out)
        return
    for j, i in enumerate(positions):
        out.scores[i] = scores[j]
        out.selected[i] = selected[j]
