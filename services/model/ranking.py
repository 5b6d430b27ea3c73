"""Vectorized batch helpers shared by every model: flatten a batch, gather, split; pick top-k; tune a cut.

A batch of requests is ragged (each request has its own candidates). Scoring flattens it into one array
of (user, item) pairs, scores them all at once, and splits the result back by the requests' offsets.
Selection ranks within each request with one ``lexsort`` over the whole batch, or, when every request has
as many candidates, one stable sort per row of a 2-D array. No Python loop runs per item: the only
per-element work happens inside numpy or in C builtins (``map``, ``dict.get``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, chain, pairwise, repeat
from typing import Any, TypeVar

import numpy as np

_Sliceable = TypeVar("_Sliceable", np.ndarray, list[Any])


def flatten(candidates: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """(every candidate of the batch in order, offsets: request r owns flat[offsets[r]:offsets[r+1]])."""
    sizes = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
    offsets = np.zeros(len(candidates) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return list(chain.from_iterable(candidates)), offsets


def lookup(index: dict[str, int], keys: Sequence[str], missing: int) -> np.ndarray:
    """Row of each key in ``index``; ``missing`` for keys it does not hold."""
    return np.fromiter(map(index.get, keys, repeat(missing)), dtype=np.int64, count=len(keys))


def split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Undo :func:`flatten` for an array of per-candidate values."""
    if len(offsets) <= 1:
        return []  # an empty batch
    n = len(offsets) - 1
    size = int(offsets[1] - offsets[0])
    if size and int(offsets[-1] - offsets[0]) == n * size and bool(np.all(np.diff(offsets) == size)):
        # Every request has as many candidates (the storefront's usual batch): rows of one 2-D view cost a
        # tenth of np.split's slicing.
        return list(flat[offsets[0] : offsets[-1]].reshape(n, size))
    return split_sizes(flat, np.diff(offsets).tolist())


def split_sizes(flat: _Sliceable, sizes: Sequence[int]) -> list[_Sliceable]:
    """``flat`` (an array or a list) cut into consecutive parts of these sizes (plain slices: ``np.split``
    costs a microsecond more per part)."""
    return [flat[a:b] for a, b in pairwise(accumulate(sizes, initial=0))]


def common_size(sizes: list[int]) -> int:
    """How many candidates every request has, when they all have as many; else (or if none) 0."""
    return sizes[0] if sizes and sizes.count(sizes[0]) == len(sizes) else 0


def ranks(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each element's rank within its group, 0 for the best score; ties go to the earlier position."""
    position = np.arange(len(scores))
    order = np.lexsort((position, -scores, group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(scores)]))
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores)) - first_of_group
    return rank


def select(scores: Sequence[np.ndarray], ks: Sequence[int], threshold: float | None) -> list[np.ndarray]:
    """Per request, the indices of its recommended candidates, best first: the top ``k`` (ties to the
    earlier candidate), keeping only those scoring at least ``threshold`` when there is one."""
    if len(ks) != len(scores):
        raise ValueError(f"{len(scores)} score arrays but {len(ks)} k values")
    if not scores:
        return []
    sizes = list(map(len, scores))
    size = common_size(sizes)
    if size:
        return _select_rows(np.concatenate(scores).reshape(len(sizes), size), ks, threshold)
    flat = np.concatenate(scores) if sum(sizes) else np.zeros(0)
    request = np.repeat(np.arange(len(scores)), sizes)
    rank = ranks(flat, request)
    keep = rank < np.repeat(np.asarray(ks, dtype=np.int64), sizes)
    if threshold is not None:
        keep &= flat >= threshold
    # Sorting the kept (request, rank) pairs puts each request's picks together, best first.
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((rank[kept], request[kept]))]
    starts = np.zeros(len(scores) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    local = kept - starts[request[kept]]
    return split_sizes(local, np.bincount(request[kept], minlength=len(scores)).tolist())


def _select_rows(scores: np.ndarray, ks: Sequence[int], threshold: float | None) -> list[np.ndarray]:
    """:func:`select` when every request has as many candidates: one row each, so a stable sort per row
    (ties to the earlier candidate, as ``ranks``) replaces the batch-wide ``lexsort``, six times cheaper.
    At a live pace batches are small and each numpy call's fixed cost is most of the work, so it makes few
    calls, and ufuncs or methods rather than Python-level wrappers (``np.clip``, ``take_along_axis``)."""
    order = (-scores).argsort(axis=1, kind="stable")
    take = np.minimum(np.maximum(np.asarray(ks, dtype=np.int64), 0), scores.shape[1])
    if threshold is not None:
        # Scores fall along each sorted row (NaN last, never kept), so those kept are a prefix of it: as
        # many as the row has scores at or above the threshold.
        np.minimum(take, (scores >= threshold).sum(axis=1), out=take)
    return [order[i, :k] for i, k in enumerate(take.tolist())]


def best_threshold(
    p: np.ndarray, y: np.ndarray, group: np.ndarray, k: int, grid: int = 60
) -> tuple[float | None, float]:
    """The score cut that maximizes micro-averaged F1 of "top-k and at least the cut" on labelled rows.

    Returns ``(threshold, f1)``; the threshold is ``None`` when no cut beats plain top-k.
    """
    if len(p) == 0 or not y.any():
        return None, 0.0
    in_top = ranks(p, group) < k
    actual = int(y.sum())
    candidates = np.unique(np.quantile(p[in_top], np.linspace(0.0, 0.98, grid)))

    def f1(picked: np.ndarray) -> float:
        tp = int(np.count_nonzero(picked & y))
        denominator = int(np.count_nonzero(picked)) + actual
        return 2 * tp / denominator if denominator else 0.0

    best_cut: float | None = None
    best = f1(in_top)
    for cut in candidates:
        score = f1(in_top & (p >= cut))
        if score > best:
            best_cut, best = float(cut), score
    return best_cut, best
