"""The fast path of batch selection and splitting, taken when every request has as many candidates (the
storefront's usual batch), gives exactly what the general path gives."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.model import ranking


def _reference_select(scores: list[np.ndarray], ks: list[int], threshold: float | None) -> list[list[int]]:
    out = []
    for s, k in zip(scores, ks, strict=True):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))[: max(k, 0)]
        out.append([i for i in order if threshold is None or s[i] >= threshold])
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda size: st.lists(
            st.tuples(
                st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), min_size=size, max_size=size),
                st.integers(-1, 10),
            ),
            min_size=1,
            max_size=12,
        )
    ),
    st.one_of(st.none(), st.sampled_from([0.1, 0.5, 0.9])),
)
def test_equal_sized_requests_select_as_the_reference(
    requests: list[tuple[list[float], int]], threshold: float | None
) -> None:
    scores = [np.array(s, dtype=float) for s, _ in requests]
    ks = [k for _, k in requests]
    got = ranking.select(scores, ks, threshold)
    assert [p.tolist() for p in got] == _reference_select(scores, ks, threshold)
    assert all(p.dtype.kind == "i" for p in got)


def test_the_fast_path_agrees_with_the_general_one_on_a_real_sized_batch() -> None:
    rng = np.random.default_rng(3)
    scores = list(np.round(rng.random((500, 20)), 2))  # rounded: many ties
    ks = rng.integers(0, 25, 500).tolist()
    ragged = [*scores, np.array([0.5])]  # one odd request sends the batch down the general path
    for threshold in (None, 0.3):
        fast = [p.tolist() for p in ranking.select(scores, ks, threshold)]
        general = [p.tolist() for p in ranking.select(ragged, [*ks, 1], threshold)][:-1]
        assert fast == general


def test_nan_scores_are_never_selected_on_either_path() -> None:
    rows = [np.array([0.2, np.nan, 0.9]), np.array([np.nan, 0.1, 0.4])]
    assert [p.tolist() for p in ranking.select(rows, [3, 3], 0.0)] == [[2, 0], [2, 1]]
    general = ranking.select([*rows, np.array([0.5])], [3, 3, 1], None)[:2]  # ragged: the general path
    assert [p.tolist() for p in ranking.select(rows, [3, 3], None)] == [p.tolist() for p in general]


@given(st.lists(st.integers(0, 6), min_size=1, max_size=10))
def test_split_undoes_flatten_equal_sized_or_not(sizes: list[int]) -> None:
    candidates = [[f"i-{j}" for j in range(n)] for n in sizes]
    flat, offsets = ranking.flatten(candidates)
    values = np.arange(len(flat), dtype=float)
    parts = ranking.split(values, offsets)
    assert [p.tolist() for p in parts] == [list(range(a, b)) for a, b in itertools.pairwise(offsets.tolist())]
    assert ranking.split(values, np.zeros(1, dtype=np.int64)) == []
