"""The scoring step as it was before its fixed cost per call was cut, kept verbatim as the reference the
faster code must agree with (see ``test_scoring_equivalence``): the checks of a model's answer, the top-k
selection, and the recommender's probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np

from schemas.errors import ModelError
from services.model.recommender import Recommender
from services.serving.scoring import DECIMALS

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    out: np.ndarray = np.log(q / (1 - q))
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


def flatten(candidates: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    sizes = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
    offsets = np.zeros(len(candidates) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return list(chain.from_iterable(candidates)), offsets


def lookup(index: dict[str, int], keys: Sequence[str], missing: int) -> np.ndarray:
    return np.fromiter(map(index.get, keys, repeat(missing)), dtype=np.int64, count=len(keys))


def split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    if len(offsets) <= 1:
        return []
    n = len(offsets) - 1
    size = int(offsets[1] - offsets[0])
    if size and int(offsets[-1] - offsets[0]) == n * size and bool(np.all(np.diff(offsets) == size)):
        return list(flat[offsets[0] : offsets[-1]].reshape(n, size))
    return np.split(flat, offsets[1:-1])


def ranks(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    position = np.arange(len(scores))
    order = np.lexsort((position, -scores, group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(scores)]))
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores)) - first_of_group
    return rank


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
    flat = np.concatenate(scores) if sizes.sum() else np.zeros(0)
    request = np.repeat(np.arange(len(scores)), sizes)
    rank = ranks(flat, request)
    keep = rank < np.repeat(np.asarray(ks, dtype=np.int64), sizes)
    if threshold is not None:
        keep &= flat >= threshold
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((rank[kept], request[kept]))]
    starts = np.zeros(len(scores) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    local = kept - starts[request[kept]]
    counts = np.bincount(request[kept], minlength=len(scores))
    return np.split(local, np.cumsum(counts)[:-1])


def _select_rows(scores: np.ndarray, ks: Sequence[int], threshold: float | None) -> list[np.ndarray]:
    size = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    take = np.clip(np.asarray(ks, dtype=np.int64), 0, size)
    top = order[:, : int(take.max())]
    if threshold is not None:
        kept = np.take_along_axis(scores, top, axis=1) >= threshold
        take = np.minimum(take, kept.sum(axis=1))
    return [top[i, :k] for i, k in enumerate(take.tolist())]


def _features(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    user_f: np.ndarray,
    item_f: np.ndarray,
    user_rate: np.ndarray,
    item_rate: np.ndarray,
) -> np.ndarray:
    taste = np.einsum("nd,nd->n", user_f[user_rows], item_f[item_rows])
    return np.column_stack([taste, _logit(item_rate[item_rows]), _logit(user_rate[user_rows])])


def _score_rows(model: Recommender, users: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    items = lookup(model.item_index_, item_ids, len(model.item_index_))
    features = _features(
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
