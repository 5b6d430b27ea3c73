"""The contract's metrics equal scikit-learn's on the concatenated item labels."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from schemas.metrics import Counts, request_counts

request = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(request, min_size=1, max_size=20))
def test_micro_average_matches_sklearn(requests: list[list[tuple[bool, bool]]]) -> None:
    total = Counts()
    y_true: list[int] = []
    y_pred: list[int] = []
    for r in requests:
        items = [f"i{n}" for n in range(len(r))]
        recommended = [i for i, (pred, _) in zip(items, r, strict=True) if pred]
        purchased = [i for i, (_, act) in zip(items, r, strict=True) if act]
        total = total + request_counts(items, recommended, purchased)
        y_pred += [int(p) for p, _ in r]
        y_true += [int(a) for _, a in r]
    ours = total.as_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        expected = {
            "accuracy": accuracy_score(y_true, y_pred),
            "precision": precision_score(y_true, y_pred, zero_division=np.nan),
            "recall": recall_score(y_true, y_pred, zero_division=np.nan),
            "f1": f1_score(y_true, y_pred, zero_division=np.nan),
        }
    for name, value in expected.items():
        if np.isnan(value):
            assert ours[name] is None, name
        else:
            assert ours[name] == value, name


def test_counts_roll() -> None:
    a, b = Counts(1, 2, 3, 4), Counts(0, 1, 0, 2)
    assert (a + b) - b == a
