"""The model protocol: any object with ``score_batch`` is served; ``select`` and ``contexts`` are optional;
answers out of contract are dead-lettered per request with the reason, never the end of the replica."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from schemas.errors import ModelError
from services.model import Model, ModelBase, Popularity, Recommender
from services.model.protocol import served
from services.serving.scoring import score


def requests(n: int, candidates: int = 6) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"r-{i}",
            "user_id": f"u-{i}",
            "items": [f"i-{j}" for j in range(candidates)],
            "ts": 1,
            **({"k": 2} if i % 2 else {}),
            **({"context": {"page": f"p-{i}"}} if i % 3 else {}),
        }
        for i in range(n)
    ]


class Ramp:
    """No base class, no select: scores rise along the candidates, so the last ones are the best."""

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return [np.linspace(0.1, 0.9, len(c)) for c in candidates]


class Contextual(ModelBase):
    """Takes the requests' contexts, and remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[Mapping[str, Any]] = []

    def score_batch(
        self,
        user_ids: Sequence[str],
        candidates: Sequence[Sequence[str]],
        contexts: Sequence[Mapping[str, Any]],
    ) -> list[np.ndarray]:
        self.seen.extend(contexts)
        return [np.full(len(c), 0.5) for c in candidates]


def test_a_model_with_only_score_batch_gets_the_default_top_k() -> None:
    reqs = requests(4)
    out = score(Ramp(), reqs, default_k=3)
    assert not out.failures
    assert out.selected == [[5, 4, 3], [5, 4], [5, 4, 3], [5, 4]]


def test_the_default_select_keeps_only_scores_at_or_above_threshold_() -> None:
    model = Ramp()
    model.threshold_ = 0.7  # type: ignore[attr-defined]  # scores 0.1, 0.26, 0.42, 0.58, 0.74, 0.9
    out = score(model, requests(2), default_k=5)
    assert out.selected == [[5, 4], [5, 4]]


def test_each_request_s_context_reaches_a_model_that_takes_contexts() -> None:
    model, reqs = Contextual(), requests(7)
    out = score(model, reqs, default_k=3)
    assert not out.failures
    assert model.seen == [r.get("context", {}) for r in reqs]


def test_a_model_that_does_not_take_contexts_is_called_without_them() -> None:
    class Strict:  # a third positional argument would be a TypeError, each request dead-lettered
        def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[Any]:
            return [[0.5] * len(c) for c in candidates]

    out = score(Strict(), requests(3), default_k=2)
    assert not out.failures and out.scores == [[0.5] * 6] * 3


def test_the_built_in_models_are_implementations_like_any_other() -> None:
    for model in (Recommender(), Popularity(), Ramp(), Contextual()):
        assert isinstance(model, Model)
    assert isinstance(Recommender(), ModelBase) and isinstance(Popularity(), ModelBase)
    assert served(Recommender()).has_select and not served(Ramp()).has_select


def test_an_object_without_score_batch_is_not_a_model() -> None:
    with pytest.raises(ModelError, match=r"builtins\.dict is not a model: it has no score_batch"):
        served({})


class Answers:
    """Scores what it is told to, for every request of a batch: an answer out of contract."""

    def __init__(self, answer: Any, select: Any = None) -> None:
        self.answer, self.picks = answer, select

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> Any:
        return [self.answer(len(c)) for c in candidates]

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[Any]:
        return [self.picks(len(s)) if self.picks else [0] for s in scores]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (Answers(lambda n: np.full(n, 1.5)), "score outside [0, 1]"),
        (Answers(lambda n: np.full(n, np.nan)), "score outside [0, 1] (or NaN)"),
        (Answers(lambda n: np.full(n + 1, 0.5)), "score array whose length is not"),
        (Answers(lambda n: np.full((n, 1), 0.5)), "2-D score arrays"),
        (Answers(lambda n: 0.5), "something other than one array per request"),
        (Answers(lambda n: ["high"] * n), "scores that are not numbers"),
        (Answers(lambda n: np.full(n, 0.5), select=lambda n: [1, 1]), "the same candidate twice"),
        (Answers(lambda n: np.full(n, 0.5), select=lambda n: [n]), "outside the candidates"),
    ],
)
def test_an_answer_out_of_contract_fails_every_request_with_the_reason(model: Any, reason: str) -> None:
    reqs = requests(5)
    out = score(model, reqs, default_k=3)
    assert sorted(i for i, _ in out.failures) == list(range(5))
    assert all(error.startswith("model: ") and reason in error for _, error in out.failures)
    assert out.scores == [None] * 5


def test_contexts_reach_a_score_batch_taking_keywords_or_set_on_the_instance() -> None:
    seen: list[Any] = []

    class Keywords:
        def score_batch(
            self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]], **extra: Any
        ) -> Any:
            seen.append(extra["contexts"])
            return [[0.5] * len(c) for c in candidates]

    reqs = requests(3)
    assert not score(Keywords(), reqs, default_k=2).failures
    model = Ramp()
    model.score_batch = Contextual().score_batch  # type: ignore[method-assign]
    assert served(model).wants_contexts and not served(Ramp()).wants_contexts
    assert seen == [[r.get("context", {}) for r in reqs]]
