"""Scoring: one model call per batch; a request that makes the model fail is isolated, the rest served.

The model is a real :class:`Recommender` trained on a small world. To make it fail on purpose,
:class:`FaultyRecommender` is that real model with one injected fault (it raises, or answers out of
contract, when a chosen user is in the batch); everything else it scores for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from services.model.recommender import Recommender
from services.sandbox.world import World
from services.serving.scoring import Scored, score


class FaultyRecommender(Recommender):
    """A real recommender with one injected fault for batches that contain ``poison`` users."""

    def __init__(self, poison: str = "u-poison", fault: str = "raise", **params: Any) -> None:
        super().__init__(**params)
        self.poison, self.fault = poison, fault

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        scores = super().score_batch(user_ids, candidates)
        if self.poison in user_ids:
            if self.fault == "raise":
                raise KeyError(self.poison)
            if self.fault == "nan":
                scores[list(user_ids).index(self.poison)][0] = np.nan
            if self.fault == "short":
                scores = scores[:-1]
        return scores


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(3, n_users=200, n_items=80)


@pytest.fixture(scope="module")
def model(world: World) -> Recommender:
    return Recommender(n_components=4).fit(world.interactions(2000, seed=1))


def requests_of(world: World, n: int, seed: int = 5) -> list[dict[str, Any]]:
    s = world.sessions(n, seed=seed, candidates=12)
    return [
        {"request_id": f"r-{i}", "user_id": u, "items": c, "ts": int(t), **({"k": 3} if i % 2 else {})}
        for i, (u, c, t) in enumerate(zip(s.user_ids, s.candidates, s.ts, strict=True))
    ]


def test_a_batch_is_scored_in_one_call_within_the_contract(world: World, model: Recommender) -> None:
    requests = requests_of(world, 50)
    requests.append({"request_id": "r-new", "user_id": "u-never-seen", "items": ["i-1", "i-nope"], "ts": 1})
    out = score(model, requests, default_k=5)
    assert not out.failures
    direct = model.score_batch([r["user_id"] for r in requests], [r["items"] for r in requests])
    for i, r in enumerate(requests):
        scores, picked = out.scores[i], out.selected[i]
        assert scores is not None and picked is not None
        assert len(scores) == len(r["items"]) and all(0.0 <= s <= 1.0 for s in scores)
        assert np.allclose(scores, direct[i], atol=1e-6)  # rounded to 6 decimals, nothing else
        assert len(picked) <= r.get("k", 5) and len(set(picked)) == len(picked)
        assert all(0 <= j < len(r["items"]) for j in picked)
        # best first
        assert [scores[j] for j in picked] == sorted((scores[j] for j in picked), reverse=True)


@pytest.mark.parametrize("fault", ["raise", "nan", "short"])
def test_only_the_requests_that_make_the_model_fail_are_isolated(world: World, fault: str) -> None:
    faulty = FaultyRecommender(fault=fault, n_components=4).fit(world.interactions(2000, seed=1))
    requests = requests_of(world, 40)
    for i in (3, 29):
        requests[i] = {**requests[i], "user_id": "u-poison"}
    out: Scored = score(faulty, requests, default_k=5)
    assert sorted(i for i, _ in out.failures) == [3, 29]
    assert all(e.startswith("model: ") for _, e in out.failures)
    if fault == "raise":
        assert "KeyError" in out.failures[0][1]
    served = [i for i in range(40) if out.scores[i] is not None]
    assert served == [i for i in range(40) if i not in (3, 29)]
