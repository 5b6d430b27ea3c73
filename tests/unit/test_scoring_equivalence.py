"""The scoring step, made cheaper per call, answers exactly as it did (:mod:`tests.unit.scoring_reference`
keeps it as it was): the recommender's probabilities and the top-k selection, over batches of 0 to 40
requests, each with as many candidates or not, ties, thresholds, unknown users and items."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.model import ranking
from services.model.recommender import Recommender
from services.sandbox.world import World
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
