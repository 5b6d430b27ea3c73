"""A storefront team's own model, written outside modelwatch's packages: the README's worked example.

Item-based nearest neighbours with scikit-learn: two items are neighbours when the same users bought them
(cosine similarity of their buyer vectors). A user's affinity for a candidate is the summed similarity of
the candidate's neighbours the user bought; a logistic regression over (affinity, the item's purchase
rate) turns that into a purchase probability. Items already in the request's cart (``context["in_cart"]``)
are not recommended again: this model takes the requests' contexts.

It lives in its own directory, found through ``model_path`` (``MODELWATCH_MODEL_PATH``), so it pickles as
``shop_knn.ShopKNN`` and a replica without that directory on its path cannot load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from services.model import ModelBase


class ShopKNN(ModelBase):
    """Item-based nearest neighbours, calibrated by a logistic regression; the default top-k select."""

    def __init__(self, neighbours: int = 10) -> None:
        self.neighbours = neighbours

    def fit(self, log: Any) -> ShopKNN:
        """Learn from an interaction log (``services.model.interactions.Interactions``)."""
        users, user_rows = np.unique(log.user_id, return_inverse=True)
        items, item_rows = np.unique(log.item_id, return_inverse=True)
        bought = sp.csr_matrix(
            (log.purchased.astype(float), (user_rows, item_rows)), shape=(len(users), len(items))
        )
        bought.data = np.minimum(bought.data, 1.0)  # bought at least once
        k = min(self.neighbours, len(items) - 1)
        # kneighbors() without points: each item's k nearest other items (itself left out).
        distance, neighbour = NearestNeighbors(metric="cosine").fit(bought.T).kneighbors(n_neighbors=k)
        similarity = sp.csr_matrix(
            (1.0 - distance.ravel(), (np.repeat(np.arange(len(items)), k), neighbour.ravel())),
            shape=(len(items), len(items)),
        )
        self.user_index_ = {u: i for i, u in enumerate(users.tolist())}
        self.item_index_ = {v: i for i, v in enumerate(items.tolist())}
        # One extra row and column of zeros for users and items the log never saw.
        self.affinity_ = np.pad(np.asarray((bought @ similarity.T).todense()), ((0, 1), (0, 1)))
        shown = np.bincount(item_rows, minlength=len(items))
        self.rate_ = np.r_[(np.bincount(item_rows, log.purchased, len(items)) + 1) / (shown + 10), 0.1]
        self.calibration_ = LogisticRegression().fit(self._features(user_rows, item_rows), log.purchased)
        return self

    def _features(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        return np.column_stack([self.affinity_[user_rows, item_rows], self.rate_[item_rows]])

    def score_batch(
        self,
        user_ids: Sequence[str],
        candidates: Sequence[Sequence[str]],
        contexts: Sequence[Mapping[str, Any]],
    ) -> list[np.ndarray]:
        """Per request, each candidate's purchase probability (0 for what is already in the cart), from
        one logistic regression call over the whole batch."""
        sizes = [len(items) for items in candidates]
        users = [self.user_index_.get(u, len(self.user_index_)) for u in user_ids]
        items = [self.item_index_.get(i, len(self.item_index_)) for c in candidates for i in c]
        p = self.calibration_.predict_proba(self._features(np.repeat(users, sizes), np.array(items)))[:, 1]
        in_cart = [
            item in cart
            for c, context in zip(candidates, contexts, strict=True)
            for cart in [set(context.get("in_cart", ()))]
            for item in c
        ]
        p[np.array(in_cart, dtype=bool)] = 0.0
        return np.split(p, np.cumsum(sizes)[:-1])
