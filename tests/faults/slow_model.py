"""A test-only model version whose scoring is slow: a fitted recommender behind a fixed delay per batch.

It stands for a model that got slow in production (a bigger version, a cold cache, a throttled CPU). It is
pickled into the registry like any version, so the replica that loads it must be able to import this
module: the fault tests start replicas with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class SlowRecommender:
    """Scores like ``inner`` after sleeping ``delay_s`` per ``score_batch`` call."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        time.sleep(self.delay_s)  # the fault under test: a slow model, not a wait in the test
        scores: list[np.ndarray] = self.inner.score_batch(user_ids, candidates)
        return scores

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[np.ndarray]:
        selected: list[np.ndarray] = self.inner.select(scores, ks)
        return selected

    def describe(self) -> dict[str, Any]:
        return {"class": "SlowRecommender", "delay_s": self.delay_s, "inner": type(self.inner).__name__}
