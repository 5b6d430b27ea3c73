"""Scoring: one model call for a whole batch, with the requests that make the model fail isolated.

The model is any object implementing :mod:`services.model.protocol` (the built-in recommender is one).
It is asked once per batch (``score_batch``, given the requests' contexts when it takes them, then
``select`` or the protocol's default). Its output is checked before anything is published: one score
array per request, one number per candidate, every score in [0, 1] and not NaN, every selected index a
distinct candidate, at most k of them. If the call raises or the output is wrong, the batch is bisected:
each half is scored on its own, recursively, so a single poisonous request costs about ``2 log2(n)`` extra
calls and only the requests that fail alone are dead-lettered, with the error. A model that answers out of
contract on every request has every request dead-lettered, never a dead replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import gt
from typing import Any

import numpy as np

from schemas.errors import ModelError
from services.model import ranking
from services.model.protocol import Model, Served, served

#: What the service needs of a model: :class:`services.model.protocol.Model`.
Scorer = Model

#: A request without a context is given this one (never mutated).
NO_CONTEXT: Mapping[str, Any] = {}


#: Scores are published rounded: six decimals are far finer than any calibration, and half the bytes.
DECIMALS = 6

#: Up to this many requests, their picks are checked as Python lists: a few short lists take less time
#: than the fixed cost (~10 µs) of the numpy calls that check a bigger batch's at once.
_FEW = 16


@dataclass
class Scored:
    """Per request (by position in the batch): its scores and recommended indices, or its error."""

    scores: list[list[float] | None]
    selected: list[list[int] | None]
    failures: list[tuple[int, str]] = field(default_factory=list)


def _flat_scores(scores: Sequence[Any], sizes: list[int]) -> np.ndarray:
    """The batch's scores as one flat float array, or :class:`ModelError` saying how they are wrong."""
    n = len(sizes)
    if len(scores) != n:
        raise ModelError(f"score_batch returned {len(scores)} score arrays for {n} requests")
    try:
        got = list(map(len, scores))
    except TypeError as exc:  # a number, None... where an array was due
        raise ModelError(f"score_batch returned something other than one array per request ({exc})") from exc
    if got != sizes:
        raise ModelError("score_batch returned a score array whose length is not its request's candidates")
    if not n:
        return np.zeros(0)
    try:
        flat = np.concatenate(scores).astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:  # strings, objects, arrays of mixed dimensions
        raise ModelError(f"score_batch returned scores that are not numbers ({exc})") from exc
    if flat.ndim != 1:
        raise ModelError(f"score_batch returned {flat.ndim}-D score arrays; one 1-D array per request")
    return flat


def _checked_picks(selected: Sequence[Any], sizes: list[int], ks: list[int]) -> list[list[int]]:
    """The batch's selections as one list of indices per request, or :class:`ModelError` saying how they
    are wrong."""
    n = len(sizes)
    if len(selected) != n:
        raise ModelError(f"select returned {len(selected)} selections for {n} requests")
    counts = list(map(len, selected))
    picked = np.concatenate(selected).astype(np.int64, copy=False) if n else np.zeros(0, dtype=np.int64)
    if picked.ndim != 1:  # nested lists would reach the published item lookup as indices
        raise ModelError(f"select returned {picked.ndim}-D selections; one list of indices per request")
    picks = ranking.split_sizes(picked.tolist(), counts)
    if any(map(gt, counts, ks)) or _outside(picked, picks, sizes, counts):
        raise ModelError("select returned more than k indices, or an index outside the candidates")
    if _repeated(picked, picks, sizes, counts):
        raise ModelError("select returned the same candidate twice for one request")
    return picks


def _outside(picked: np.ndarray, picks: list[list[int]], sizes: list[int], counts: list[int]) -> bool:
    """Whether a pick (flat in ``picked``, per request in ``picks``) is not an index of its request's
    candidates."""
    if len(picks) <= _FEW:
        return any(p and (min(p) < 0 or max(p) >= size) for p, size in zip(picks, sizes, strict=True))
    if not picked.size:
        return False
    size = ranking.common_size(sizes)  # then one limit for all, no per-pick array to build
    limit = size if size else np.repeat(sizes, counts)
    return bool(picked.min() < 0 or (picked >= limit).any())


def _repeated(picked: np.ndarray, picks: list[list[int]], sizes: list[int], counts: list[int]) -> bool:
    """Whether a request picks a candidate twice, given every pick is an index of its candidates."""
    if len(picks) <= _FEW:
        return any(len(set(p)) < len(p) for p in picks)
    if not picked.size:
        return False
    # Each pick's place among the batch's candidates: request r's are starts[r] + [0, sizes[r]), disjoint
    # from the other requests', so a place taken twice is one request's candidate picked twice.
    starts = list(accumulate(sizes[:-1], initial=0))
    return bool(np.bincount(np.repeat(starts, counts) + picked).max() > 1)


def _checked(
    model: Served,
    users: list[str],
    candidates: list[list[str]],
    contexts: list[Mapping[str, Any]],
    ks: list[int],
) -> tuple[list[list[float]], list[list[int]]]:
    """Score and select for these requests, or raise if the model fails or answers out of contract.

    A live replica's batches are a few requests, and then the fixed cost of each numpy call is most of the
    work: the checks make few of them (reductions rather than elementwise masks), and convert to Python
    numbers once for the whole batch."""
    scores = model.score_batch(users, candidates, contexts)
    sizes = list(map(len, candidates))
    flat = _flat_scores(scores, sizes).round(DECIMALS)
    if flat.size and not (flat.min() >= 0.0 and flat.max() <= 1.0):  # NaN fails both (min/max keep it)
        raise ModelError("score_batch returned a score outside [0, 1] (or NaN)")
    picks = _checked_picks(model.select(scores, ks), sizes, ks)
    size = ranking.common_size(sizes)
    by_request = (
        flat.reshape(len(sizes), size).tolist() if size else ranking.split_sizes(flat.tolist(), sizes)
    )
    return by_request, picks


@dataclass
class _Batch:
    """The requests' fields the model is given, by position in the batch."""

    users: list[str]
    candidates: list[list[str]]
    contexts: list[Mapping[str, Any]]
    ks: list[int]

    def at(self, positions: list[int]) -> _Batch:
        if len(positions) == len(self.users):
            return self
        return _Batch(
            [self.users[i] for i in positions],
            [self.candidates[i] for i in positions],
            [self.contexts[i] for i in positions],
            [self.ks[i] for i in positions],
        )


def score(model: Model | Served, requests: Sequence[dict[str, Any]], default_k: int) -> Scored:
    """Score ``requests`` with ``model``: every request gets scores and a selection, or a failure.

    ``model`` is best given already wrapped by :func:`services.model.protocol.served` (the service wraps
    each version once, when it loads it)."""
    n = len(requests)
    batch = _Batch(
        users=[r["user_id"] for r in requests],
        candidates=[r["items"] for r in requests],
        contexts=[r.get("context", NO_CONTEXT) for r in requests],
        ks=[r.get("k", default_k) for r in requests],
    )
    out = Scored(scores=[None] * n, selected=[None] * n)
    _bisect(served(model), batch, list(range(n)), out)
    return out


def _bisect(model: Served, batch: _Batch, positions: list[int], out: Scored) -> None:
    if not positions:
        return
    part = batch.at(positions)
    try:
        scores, selected = _checked(model, part.users, part.candidates, part.contexts, part.ks)
    except Exception as exc:  # a model may raise anything: isolate it rather than die of it
        if len(positions) == 1:
            reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            out.failures.append((positions[0], f"model: {reason}"[:2000]))
            return
        half = len(positions) // 2
        _bisect(model, batch, positions[:half], out)
        _bisect(model, batch, positions[half:], out)
        return
    for j, i in enumerate(positions):
        out.scores[i] = scores[j]
        out.selected[i] = selected[j]
