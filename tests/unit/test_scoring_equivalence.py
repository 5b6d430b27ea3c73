"""The scoring step, made cheaper per call, answers exactly as it did (:mod:`tests.unit.scoring_reference`
keeps it as it was): the recommender's probabilities, the top-k selection, the checks of a model's answer
(the same verdict and reason for every answer, honest or not) and the whole :func:`score`, over batches of
0 to 40 requests, each with as many candidates or not, ties, thresholds, unknown users and items."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import ModelError
from services.model import ranking
from services.model.protocol import Served
from services.model.recommender import Recommender
from services.sandbox.world import World
from services.serving import scoring
from tests.unit import scoring_reference as reference

Batch = tuple[list[str], list[list[str]], list[int]]


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(3, n_users=200, n_items=80)


@pytest.fixture(scope="module")
def model(world: World) -> Recommender:
    fitted = Recommender(n_components=4).fit(world.interactions(2000, seed=1))
    assert fitted.threshold_ is not None  # so the threshold's cut is exercised end to end
    return fitted


def sizes(n: int, most: int) -> st.SearchStrategy[list[int]]:
    """Candidates per request for ``n`` requests: as many each (the storefront's usual batch), or not."""
    return st.one_of(
        st.integers(0, most).map(lambda size: [size] * n),
        st.lists(st.integers(0, most), min_size=n, max_size=n),
    )


@st.composite
def batches(draw: st.DrawFn, users: Sequence[str], items: Sequence[str]) -> Batch:
    """Requests as a replica polls them, for users and items known or not, with repeats (so ties)."""
    n = draw(st.integers(0, 40))
    counts = draw(sizes(n, 24))
    pool = draw(st.sampled_from([items, items[:6]]))  # six items: many repeats, so many tied scores
    item = st.sampled_from([*pool, "i-unknown", "i-also-unknown"])
    user = st.sampled_from([*users, "u-unknown"])
    return (
        draw(st.lists(user, min_size=n, max_size=n)),
        [draw(st.lists(item, min_size=size, max_size=size)) for size in counts],
        draw(st.lists(st.integers(-1, 26), min_size=n, max_size=n)),
    )


def _known(model: Recommender) -> tuple[list[str], list[str]]:
    return list(model.user_index_)[:30], list(model.item_index_)


def test_probabilities_are_as_before_and_ties_stay_ties(model: Recommender) -> None:
    users, items = _known(model)

    @settings(max_examples=150, deadline=None)
    @given(batches(users, items))
    def check(batch: Batch) -> None:
        user_ids, candidates, _ = batch
        got = model.score_batch(user_ids, candidates)
        want = reference.score_batch(model, user_ids, candidates)
        assert len(got) == len(want)
        for g, w, c in zip(got, want, candidates, strict=True):
            assert g.shape == w.shape == (len(c),)
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
            for j, item in enumerate(c):  # the same item twice in a request: the very same score
                assert g[j] == g[c.index(item)]
        flat_users = [u for u, c in zip(user_ids, candidates, strict=True) for _ in c]
        flat_items = [i for c in candidates for i in c]
        pairs = model.score_pairs(flat_users, flat_items)
        np.testing.assert_allclose(pairs, reference.score_pairs(model, flat_users, flat_items), rtol=1e-12)

    check()


SCORES = st.one_of(
    st.sampled_from([0.0, -0.0, 0.1, 0.25, 0.5, 0.75, 1.0, math.nan, math.inf, -math.inf]),
    st.floats(0.0, 1.0),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 40).flatmap(
        lambda n: st.tuples(sizes(n, 12), st.lists(st.integers(-1, 14), min_size=n, max_size=n))
    ),
    st.data(),
    st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, math.nan])),
)
def test_selection_is_as_before(
    batch: tuple[list[int], list[int]], data: st.DataObject, threshold: Any
) -> None:
    counts, ks = batch
    scores = [np.array(data.draw(st.lists(SCORES, min_size=n, max_size=n)), dtype=float) for n in counts]
    got = ranking.select(scores, ks, threshold)
    assert [p.tolist() for p in got] == [p.tolist() for p in reference.select(scores, ks, threshold)]
    assert all(p.dtype.kind == "i" for p in got)


class Answers:
    """A model answering exactly what it is given to, honest or not."""

    def __init__(self, scores: Any, selected: Any) -> None:
        self.scores, self.selected = scores, selected

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> Any:
        return self.scores

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> Any:
        return self.selected


def _spoil(draw: st.DrawFn, answer: list[Any], wrongs: list[Callable[[Any], Any]]) -> list[Any]:
    """The answer, or a copy with one request's part replaced by something wrong (or the list cut)."""
    how = draw(st.sampled_from(["honest"] * 4 + ["part"] * 4 + ["short", "long"]))
    if how == "short" and answer:
        return answer[:-1]
    if how == "long":
        return [*answer, answer[-1] if answer else []]
    if how == "part" and answer:
        i = draw(st.integers(0, len(answer) - 1))
        return [*answer[:i], draw(st.sampled_from(wrongs))(answer[i]), *answer[i + 1 :]]
    return answer


WRONG_SCORES: list[Callable[[Any], Any]] = [
    lambda s: np.r_[s[:-1], math.nan] if len(s) else s,
    lambda s: np.r_[s[:-1], 1.5] if len(s) else s,
    lambda s: np.r_[s[:-1], -0.01] if len(s) else s,
    lambda s: np.r_[s[:-1], -4e-7] if len(s) else s,  # rounds to -0.0: within [0, 1]
    lambda s: np.r_[s[:-1], 1 + 4e-7] if len(s) else s,  # rounds to 1.0
    lambda s: np.r_[s, 0.5],
    lambda s: s[:-1],
    lambda s: 0.5,
    lambda s: None,
    lambda s: ["high"] * len(s),
    lambda s: s.reshape(-1, 1),
    lambda s: s.tolist(),
    lambda s: s.astype(np.float32),
]

WRONG_PICKS: list[Callable[[Any], Any]] = [
    lambda p: [*p[:-1], p[0]] if len(p) > 1 else p,  # a candidate twice
    lambda p: [p[-1], *p] if len(p) else p,  # twice, and one more than picked
    lambda p: [*p[:-1], 99] if len(p) else p,
    lambda p: [*p[:-1], -1] if len(p) else p,
    lambda p: [*p, 0],
    lambda p: [float(i) + 0.5 for i in p],  # truncated to indices, as before
    lambda p: list(p),
    lambda p: 3,
    lambda p: [],
]


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[list[str]], list[int], Any, Any]:
    """(candidates, ks, what score_batch returns, what select returns), each maybe out of contract.

    At least one request: the check is never given an empty batch (it used to fail on one)."""
    n = draw(st.integers(1, 40))
    counts = draw(sizes(n, 20))
    ks = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    if draw(st.integers(0, 9)) == 0:  # a negative k: no selection is short enough
        ks[draw(st.integers(0, n - 1))] = -1
    scores = [np.round(np.array(draw(st.lists(st.floats(0, 1), min_size=c, max_size=c))), 2) for c in counts]
    picks = reference.select(scores, ks, draw(st.sampled_from([None, 0.5])))
    return (
        [[f"i-{j}" for j in range(c)] for c in counts],
        ks,
        _spoil(draw, scores, WRONG_SCORES),
        _spoil(draw, picks, WRONG_PICKS),
    )


def _outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", run()
    except Exception as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=500, deadline=None)
@given(answers())
def test_every_answer_gets_the_verdict_and_reason_it_got_before(
    answer: tuple[list[list[str]], list[int], Any, Any],
) -> None:
    candidates, ks, scores, picks = answer
    model = Served(Answers(scores, picks), wants_contexts=False, has_select=True)
    users, contexts = [f"u-{i}" for i in range(len(ks))], [{}] * len(ks)
    got = _outcome(lambda: scoring._checked(model, users, candidates, contexts, ks))
    assert got == _outcome(lambda: reference.checked(model, users, candidates, contexts, ks))


PICKS_AT_THE_EDGE: dict[str, Callable[[int, int], list[int]]] = {
    # (candidates, k) -> one request's picks
    "the last candidate": lambda size, k: [size - 1],
    "one past the last": lambda size, k: [size],
    "a negative index": lambda size, k: [-1],
    "a candidate twice": lambda size, k: [0, 0],
    "k of them": lambda size, k: list(range(k)),
    "one more than k": lambda size, k: list(range(k + 1)),
    "none": lambda size, k: [],
}


@pytest.mark.parametrize("n", [1, 3, scoring._FEW, scoring._FEW + 1, 30])  # checked in Python, or numpy
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("picks", PICKS_AT_THE_EDGE)
def test_picks_at_the_edge_get_the_verdict_they_got_before_however_checked(
    n: int, ragged: bool, picks: str
) -> None:
    sizes = [3 + (i % 4 if ragged else 0) for i in range(n)]
    ks = [2] * n
    scores = [np.linspace(0.2, 0.8, size) for size in sizes]
    selected: list[Any] = [[size - 1] for size in sizes]
    selected[n // 2] = PICKS_AT_THE_EDGE[picks](sizes[n // 2], ks[n // 2])
    model = Served(Answers(scores, selected), wants_contexts=False, has_select=True)
    users, candidates = [f"u-{i}" for i in range(n)], [[f"i-{j}" for j in range(s)] for s in sizes]
    got = _outcome(lambda: scoring._checked(model, users, candidates, [{}] * n, ks))
    assert got == _outcome(lambda: reference.checked(model, users, candidates, [{}] * n, ks))
    assert (got[0] == "ok") == (picks in ("the last candidate", "k of them", "none"))


def test_nested_selections_are_refused_where_they_used_to_pass() -> None:
    """The one answer judged differently: ``[[0]]`` as a selection reached the published item lookup."""
    model = Served(Answers([np.full(3, 0.5)], [[[0]]]), wants_contexts=False, has_select=True)
    batch: Any = (["u-1"], [["i-1", "i-2", "i-3"]], [{}], [2])
    assert reference.checked(model, *batch) == ([[0.5, 0.5, 0.5]], [[[0]]])
    with pytest.raises(ModelError, match="2-D selections"):
        scoring._checked(model, *batch)


class Before:
    """The recommender as it scored and selected before."""

    def __init__(self, model: Recommender) -> None:
        self.model = model

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[Any]:
        return reference.score_batch(self.model, user_ids, candidates)

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[np.ndarray]:
        return reference.select(scores, ks, self.model.threshold_)


def test_a_whole_batch_is_scored_as_before(model: Recommender) -> None:
    users, items = _known(model)

    @settings(max_examples=150, deadline=None)
    @given(batches(users, items), st.integers(1, 8))
    def check(batch: Batch, default_k: int) -> None:
        user_ids, candidates, ks = batch
        requests = [
            {"request_id": f"r-{i}", "user_id": u, "items": c, "ts": 1, **({"k": k} if k % 3 else {})}
            for i, (u, c, k) in enumerate(zip(user_ids, candidates, ks, strict=True))
        ]
        got = scoring.score(model, requests, default_k)
        with mock.patch.object(scoring, "_checked", reference.checked):
            want = scoring.score(Before(model), requests, default_k)
        assert got == want

    check()
