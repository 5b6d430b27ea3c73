"""The top-k selection, made cheaper per call, selects exactly as it did (:mod:`tests.unit.scoring_reference`
keeps the scoring step as it was), over batches of 0 to 40 requests, each with as many candidates or not,
ties, NaN, thresholds and every k."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.model import ranking
from tests.unit import scoring_reference as reference


def sizes(n: int, most: int) -> st.SearchStrategy[list[int]]:
    """Candidates per request for ``n`` requests: as many each (the storefront's usual batch), or not."""
    return st.one_of(
        st.integers(0, most).map(lambda size: [size] * n),
        st.lists(st.integers(0, most), min_size=n, max_size=n),
    )


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
