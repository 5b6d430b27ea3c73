"""The popularity baseline: every user gets the items that sell best, whoever they are.

A model must beat it on held-out F1 and precision to be worth deploying. It is tuned the same way as the
:class:`~services.model.recommender.Recommender` (a threshold fitted on the latest training sessions), so
the comparison is fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator

from schemas.errors import ModelError
from services.model import ranking
from services.model.interactions import Interactions
from services.model.protocol import ModelBase
from services.model.recommender import smoothed_rates


class Popularity(ModelBase, BaseEstimator):
    """Scores each candidate by its item's smoothed purchase rate."""

    def __init__(
        self,
        prior_strength: float = 20.0,
        calibration_fraction: float = 0.2,
        threshold: float | Literal["auto"] | None = "auto",
        k: int = 5,
    ) -> None:
        self.prior_strength = prior_strength
        self.calibration_fraction = calibration_fraction
        self.threshold = threshold
        self.k = k

    def fit(self, X: Interactions, y: Any = None) -> Popularity:
        if len(X) == 0 or not X.purchased.any():
            raise ModelError("cannot train on a log without purchases")
        if self.threshold == "auto":
            early, late = X.split_by_time(self.calibration_fraction)
            self._learn(early)
            p = self.score_pairs(late.user_id.tolist(), late.item_id.tolist())
            self.threshold_, _ = ranking.best_threshold(p, late.purchased, late.session, self.k)
        else:
            self.threshold_ = None if self.threshold is None else float(self.threshold)
        self._learn(X)
        return self

    def _learn(self, X: Interactions) -> None:
        items, rows = np.unique(X.item_id, return_inverse=True)
        y = X.purchased.astype(np.float64)
        self.global_rate_ = float(y.mean())
        self.item_index_ = {v: i for i, v in enumerate(items.tolist())}
        rates = smoothed_rates(rows, y, len(items), self.global_rate_, self.prior_strength)
        self.item_rate_ = np.r_[rates, self.global_rate_]

    def score_pairs(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "item_rate_"):
            raise ModelError("the popularity baseline has not been fitted")
        rows = ranking.lookup(self.item_index_, item_ids, len(self.item_index_))
        rates: np.ndarray = self.item_rate_[rows]
        return rates

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        flat_items, offsets = ranking.flatten(candidates)
        return ranking.split(self.score_pairs([], flat_items), offsets)
