"""The recommender: better than popularity on held-out data, calibrated, vectorized, never failing."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.metrics import f1_score, precision_score

from schemas.errors import ModelError
from services.model import Popularity, Recommender, ranking
from services.model.evaluation import evaluate
from services.model.interactions import Interactions
from services.model.training import degrade_labels
from services.sandbox.world import World

K = 5


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(11, n_users=300, n_items=100)


@pytest.fixture(scope="module")
def split(world: World) -> tuple[Interactions, Interactions]:
    return world.interactions(6000, seed=1).split_by_time(0.2)


@pytest.fixture(scope="module")
def model(split: tuple[Interactions, Interactions]) -> Recommender:
    return Recommender(k=K).fit(split[0])


def test_beats_popularity_on_held_out_f1_and_precision(
    model: Recommender, split: tuple[Interactions, Interactions]
) -> None:
    train, held = split
    ours = evaluate(model, held, K)
    popular = evaluate(Popularity(k=K).fit(train), held, K)
    assert ours["f1"] is not None and popular["f1"] is not None
    assert ours["precision"] is not None and popular["precision"] is not None
    assert ours["f1"] > popular["f1"] + 0.08
    assert ours["precision"] > popular["precision"] + 0.08


def test_degraded_labels_make_a_clearly_worse_model(
    model: Recommender, split: tuple[Interactions, Interactions]
) -> None:
    train, held = split
    good = evaluate(model, held, K)["f1"]
    bad = evaluate(Recommender(k=K).fit(degrade_labels(train, 0.7, seed=1)), held, K)["f1"]
    assert good is not None and bad is not None
    assert bad < good - 0.08


def test_degrade_shuffles_that_fraction_and_keeps_the_base_rate(
    split: tuple[Interactions, Interactions],
) -> None:
    train = split[0]
    shuffled = degrade_labels(train, 0.5, seed=3)
    assert shuffled.purchased.sum() == train.purchased.sum()
    changed = np.mean(shuffled.purchased != train.purchased)
    # Half the rows are shuffled; a shuffled label differs from its own with chance 2p(1-p).
    p = train.purchased.mean()
    assert abs(changed - 0.5 * 2 * p * (1 - p)) < 0.01
    assert np.array_equal(degrade_labels(train, 0.0).purchased, train.purchased)
    with pytest.raises(ModelError):
        degrade_labels(train, 1.5)


def test_probabilities_are_calibrated_on_held_out_data(
    model: Recommender, split: tuple[Interactions, Interactions]
) -> None:
    held = split[1]
    p = model.score_pairs(held.user_id.tolist(), held.item_id.tolist())
    assert ((p >= 0) & (p <= 1)).all()
    assert abs(p.mean() - held.purchased.mean()) < 0.015
    top = p >= np.quantile(p, 0.9)
    assert abs(p[top].mean() - held.purchased[top].mean()) < 0.08


def test_scoring_a_whole_batch_is_one_vectorized_call(
    model: Recommender, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = world.sessions(1000, seed=42, candidates=20)
    # Per-request reference, computed before the spy is installed.
    expected = [
        model.score_batch([u], [c])[0] for u, c in zip(sessions.user_ids, sessions.candidates, strict=True)
    ]
    calls: list[int] = []
    logits = Recommender._logits

    def spy(self: Recommender, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        calls.append(items.size)
        return logits(self, users, items)

    monkeypatch.setattr(Recommender, "_logits", spy)
    scores = model.score_batch(sessions.user_ids, sessions.candidates)
    assert calls == [20_000]  # one pass over every candidate of the batch
    assert len(scores) == 1000 and all(s.shape == (20,) for s in scores)
    for got, want in zip(scores, expected, strict=True):
        assert np.allclose(got, want)
    picks = model.select(scores, [K] * 1000)
    assert all(len(p) <= K for p in picks)


def test_unknown_users_and_items_get_the_popularity_fallback(model: Recommender) -> None:
    items = list(model.item_index_)
    [stranger] = model.score_batch(["u-never-seen"], [items])
    # With no taste to go on, the ranking is the popularity ranking.
    rates = model.item_rate_[:-1]
    assert np.array_equal(np.argsort(-stranger, kind="stable"), np.argsort(-rates, kind="stable"))
    [mixed] = model.score_batch(["u-1"], [["i-0", "i-not-in-catalogue", "also-unknown"]])
    assert ((mixed >= 0) & (mixed <= 1)).all()
    assert mixed[1] == mixed[2]
    assert model.score_batch([], []) == []
    [empty] = model.score_batch(["u-1"], [[]])
    assert empty.shape == (0,)


def test_select_takes_the_top_k_above_the_threshold_best_first() -> None:
    scores = [np.array([0.1, 0.9, 0.5, 0.9]), np.array([0.3, 0.2]), np.array([])]
    picks = ranking.select(scores, [2, 5, 3], threshold=None)
    assert [p.tolist() for p in picks] == [[1, 3], [0, 1], []]
    picks = ranking.select(scores, [3, 5, 3], threshold=0.4)
    assert [p.tolist() for p in picks] == [[1, 3, 2], [], []]
    assert [p.tolist() for p in ranking.select(scores, [0, 1, 1], None)] == [[], [0], []]


def _reference_select(scores: list[np.ndarray], ks: list[int], threshold: float | None) -> list[list[int]]:
    out = []
    for s, k in zip(scores, ks, strict=True):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        out.append([i for i in order if threshold is None or s[i] >= threshold])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), max_size=12), st.integers(0, 6)
        ),
        max_size=8,
    ),
    st.one_of(st.none(), st.sampled_from([0.1, 0.5, 0.9])),
)
def test_select_matches_a_plain_python_reference(
    requests: list[tuple[list[float], int]], threshold: float | None
) -> None:
    scores = [np.array(s, dtype=float) for s, _ in requests]
    ks = [k for _, k in requests]
    got = [p.tolist() for p in ranking.select(scores, ks, threshold)]
    assert got == _reference_select(scores, ks, threshold)


def test_held_out_metrics_equal_scikit_learn_on_the_item_labels(
    model: Recommender, split: tuple[Interactions, Interactions]
) -> None:
    held = split[1]
    users, candidates, purchased = held.requests()
    picks = model.select(model.score_batch(users, candidates), [K] * len(users))
    y_true, y_pred = [], []
    for c, p, b in zip(candidates, picks, purchased, strict=True):
        chosen = set(p.tolist())
        y_true += [item in b for item in c]
        y_pred += [i in chosen for i in range(len(c))]
    metrics = evaluate(model, held, K)
    assert metrics["f1"] == pytest.approx(f1_score(y_true, y_pred))
    assert metrics["precision"] == pytest.approx(precision_score(y_true, y_pred))


def test_follows_the_estimator_api(split: tuple[Interactions, Interactions]) -> None:
    fresh = Recommender(n_components=4, threshold=None)
    assert fresh.get_params()["n_components"] == 4
    copy = clone(fresh)
    assert copy.fit(split[0]) is copy
    assert copy.threshold_ is None
    with pytest.raises(ModelError, match="not been fitted"):
        Recommender().score_batch(["u-1"], [["i-1"]])
    no_purchases = split[0].take(~split[0].purchased)
    with pytest.raises(ModelError, match="without purchases"):
        Recommender().fit(no_purchases)


def _stored(model: Recommender) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)  # as the registry stores a version
    return buffer.getvalue()


def test_the_scoring_tables_are_never_stored_and_a_stored_model_scores_as_it_did(
    split: tuple[Interactions, Interactions], world: World
) -> None:
    model = Recommender(n_components=4).fit(split[0])
    before = _stored(model)  # as a model stored before the tables existed: none built yet
    sessions = world.sessions(50, seed=7, candidates=20)
    scores = model.score_batch(sessions.user_ids, sessions.candidates)
    assert _stored(model) == before
    loaded = joblib.load(io.BytesIO(before))
    for got, want in zip(loaded.score_batch(sessions.user_ids, sessions.candidates), scores, strict=True):
        assert np.array_equal(got, want)


def test_a_refitted_model_scores_with_its_new_parameters(
    split: tuple[Interactions, Interactions], world: World
) -> None:
    model = Recommender(n_components=4).fit(split[0])
    sessions = world.sessions(20, seed=8, candidates=20)
    model.score_batch(sessions.user_ids, sessions.candidates)  # builds the tables of the first fit
    refitted = model.fit(degrade_labels(split[0], 0.5, seed=2))
    fresh = Recommender(n_components=4).fit(degrade_labels(split[0], 0.5, seed=2))
    for got, want in zip(
        refitted.score_batch(sessions.user_ids, sessions.candidates),
        fresh.score_batch(sessions.user_ids, sessions.candidates),
        strict=True,
    ):
        assert np.array_equal(got, want)
