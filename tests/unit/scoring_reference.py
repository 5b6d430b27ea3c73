"""The scoring step as it was before its fixed cost per call was cut, kept verbatim as the reference the
faster code must agree with (see ``test_scoring_equivalence``): the checks of a model's answer, the top-k
selection, and the recommender's probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from schemas.errors import ModelError

# What the change left as it was is imported, not copied.
from services.model.ranking import flatten, lookup, split
from services.model.recommender import Recommender
from services.serving.scoring import DECIMALS


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


def _flat_scores(scores: Sequence[Any], sizes: np.ndarray) -> np.ndarray:
    n = len(sizes)
    if len(scores) != n:
        raise ModelError(f"score_batch returned {len(scores)} score arrays for {n} requests")
    try:
        got = np.fromiter(map(len, scores), dtype=np.int64, count=n)
    except TypeError as exc:
        raise ModelError(f"score_batch returned something other than one array per request ({exc})") from exc
    if not np.array_equal(sizes, got):
        raise ModelError("score_batch returned a score array whose length is not its request's candidates")
    if not n:
        return np.zeros(0)
    try:
        flat = np.concatenate(scores).astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"score_batch returned scores that are not numbers ({exc})") from exc
    if flat.ndim != 1:
        raise ModelError(f"score_batch returned {flat.ndim}-D score arrays; one 1-D array per request")
    return flat


def checked(
    model: Any,
    users: list[str],
    candidates: list[list[str]],
    contexts: list[Mapping[str, Any]],
    ks: list[int],
) -> tuple[list[list[float]], list[list[int]]]:
    """``services.serving.scoring._checked`` as it was."""
    scores = model.score_batch(users, candidates, contexts)
    n = len(users)
    sizes = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=n)
    flat = np.round(_flat_scores(scores, sizes), DECIMALS)
    if not np.all((flat >= 0.0) & (flat <= 1.0)):
        raise ModelError("score_batch returned a score outside [0, 1] (or NaN)")
    selected = model.select(scores, ks)
    if len(selected) != n:
        raise ModelError(f"select returned {len(selected)} selections for {n} requests")
    counts = np.fromiter((len(s) for s in selected), dtype=np.int64, count=n)
    picked = np.concatenate(selected).astype(np.int64, copy=False) if n else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(n), counts)
    if np.any(counts > np.asarray(ks)) or np.any((picked < 0) | (picked >= sizes[owner])):
        raise ModelError("select returned more than k indices, or an index outside the candidates")
    if len(np.unique(owner * (int(sizes.max(initial=0)) + 1) + picked)) != len(picked):
        raise ModelError("select returned the same candidate twice for one request")
    flat_scores, flat_picked = flat.tolist(), picked.tolist()
    score_ends, pick_ends = np.cumsum(sizes).tolist(), np.cumsum(counts).tolist()
    score_starts, pick_starts = [0, *score_ends[:-1]], [0, *pick_ends[:-1]]
    return (
        [flat_scores[a:b] for a, b in zip(score_starts, score_ends, strict=True)],
        [flat_picked[a:b] for a, b in zip(pick_starts, pick_ends, strict=True)],
    )


def select(scores: Sequence[np.ndarray], ks: Sequence[int], threshold: float | None) -> list[np.ndarray]:
    """``services.model.ranking.select`` as it was."""
    if len(ks) != len(scores):
        raise ValueError(f"{len(scores)} score arrays but {len(ks)} k values")
    if not scores:
        return []
    sizes = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
    if sizes[0] and bool(np.all(sizes == sizes[0])):
        return _select_rows(np.concatenate(scores).reshape(len(scores), int(sizes[0])), ks, threshold)
    # Ragged: request by request, a stable sort of its scores (ties to the earlier candidate, NaN last),
    # the top k, those at or above the threshold: what the batch-wide lexsort computes.
    out = []
    for row, k in zip(scores, ks, strict=True):
        top = np.argsort(-np.asarray(row, dtype=float), kind="stable")[: max(int(k), 0)]
        out.append(top if threshold is None else top[np.asarray(row, dtype=float)[top] >= threshold])
    return out


def _select_rows(scores: np.ndarray, ks: Sequence[int], threshold: float | None) -> list[np.ndarray]:
    size = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    take = np.clip(np.asarray(ks, dtype=np.int64), 0, size)
    top = order[:, : int(take.max())]
    if threshold is not None:
        kept = np.take_along_axis(scores, top, axis=1) >= threshold
        take = np.minimum(take, kept.sum(axis=1))
    return [top[i, :k] for i, k in enumerate(take.tolist())]


def _score_rows(model: Recommender, users: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    items = lookup(model.item_index_, item_ids, len(model.item_index_))
    features = Recommender._features(
        users, items, model.user_factors_, model.item_factors_, model.user_rate_, model.item_rate_
    )
    return _sigmoid(features @ model.coef_ + model.intercept_)


def score_batch(
    model: Recommender, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]
) -> list[Any]:
    """``Recommender.score_batch`` as it was."""
    flat_items, offsets = flatten(candidates)
    users = lookup(model.user_index_, user_ids, len(model.user_index_))
    return split(_score_rows(model, np.repeat(users, np.diff(offsets)), flat_items), offsets)


def score_pairs(model: Recommender, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """``Recommender.score_pairs`` as it was."""
    users = lookup(model.user_index_, user_ids, len(model.user_index_))
    return _score_rows(model, users, item_ids)
