"""A test-only model version that raises on every request: it stands for a version whose artifact loads
but cannot score (a missing feature, a broken dependency). It is pickled into the registry like any
version, so the replica that loads it imports this module: the tests start replicas with the repository
root on ``PYTHONPATH``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class FailingRecommender:
    """Raises on every ``score_batch`` call; the service dead-letters each request with its version."""

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        raise RuntimeError("this version fails on every request")  # the fault under test

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[np.ndarray]:
        raise RuntimeError("this version fails on every request")

    def describe(self) -> dict[str, Any]:
        return {"class": "FailingRecommender"}
