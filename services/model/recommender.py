"""The recommender: a factorization of the user-item matrix, calibrated to purchase probability.

How it learns, in four steps, each chosen for a reason:

1. A popularity prior: each item's (and user's) purchase rate, shrunk towards the global rate by
   ``prior_strength`` pseudo-observations so that rarely shown items get no wild estimates.
2. The residual matrix: per (user, item) cell, the mean of ``purchased - item rate`` over its impressions.
   Subtracting the item rate takes popularity and exposure (popular items are shown more) out of the
   matrix, so the factorization spends its components on personal taste; the mean (not the sum) keeps
   heavily shown cells from dominating.
3. ``TruncatedSVD`` of that sparse matrix: user and item embeddings whose dot product estimates how much
   more (or less) than usual a user likes an item.
4. A logistic calibration over (taste score, logit item rate, logit user rate), fitted *cross-wise*: the
   factorization is first fitted on the earlier part of the training data and the calibration on the
   later part, so the calibration sees honest out-of-sample scores and the probabilities are not
   overconfident. The factorization is then refitted on all the data. The same later part tunes the
   score threshold that maximizes F1 of "top-k and at least the threshold".

Unknown users and items map to an extra all-zero embedding row and the global rate, so they get the
calibrated popularity prediction: never an error.

Scoring looks a whole batch up with integer indices and computes every probability in a few numpy calls:
the calibration is folded into the embeddings once per loaded model, so a (user, item) logit is one dot
product (:meth:`Recommender._tables`; see :mod:`services.model.ranking`). It is one implementation of
:mod:`services.model.protocol`, and selects with the protocol's default: the top k at or above the fitted
``threshold_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.decomposition import TruncatedSVD
from sklearn.linear_model import LogisticRegression

from schemas.errors import ModelError
from services.model import ranking
from services.model.interactions import Interactions
from services.model.protocol import ModelBase

#: Probabilities are clipped away from 0 and 1 before taking logits.
_EPS = 1e-6

#: The attribute holding a fitted model's scoring tables (:meth:`Recommender._tables`), never pickled.
_TABLES = "_scoring_tables"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    out: np.ndarray = np.log(q / (1 - q))
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-z)) in one ufunc call where numpy takes four.
    out: np.ndarray = expit(z)
    return out


def smoothed_rates(index: np.ndarray, y: np.ndarray, n: int, prior: float, strength: float) -> np.ndarray:
    """Purchase rate per index, shrunk towards ``prior`` by ``strength`` pseudo-observations."""
    bought = np.bincount(index, weights=y, minlength=n)
    shown = np.bincount(index, minlength=n)
    rates: np.ndarray = (bought + prior * strength) / (shown + strength)
    return rates


class Recommender(ModelBase, BaseEstimator):
    """Collaborative filtering over (user, candidate items) batches; see the module docstring.

    Parameters
    ----------
    n_components:
        Taste dimensions of the factorization (0: popularity prior only).
    prior_strength:
        Pseudo-observations shrinking item and user rates towards the global rate.
    calibration_fraction:
        Latest share of the training sessions used to fit the calibration and the threshold.
    threshold:
        ``"auto"``: tuned for F1 at ``k``; a number: fixed; ``None``: plain top-k.
    k:
        Recommendations per request when tuning the threshold (the serving default).
    """

    def __init__(
        self,
        n_components: int = 8,
        prior_strength: float = 20.0,
        calibration_fraction: float = 0.2,
        threshold: float | Literal["auto"] | None = "auto",
        k: int = 5,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.prior_strength = prior_strength
        self.calibration_fraction = calibration_fraction
        self.threshold = threshold
        self.k = k
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Interactions, y: Any = None) -> Recommender:
        """Learn from an interaction log (``y`` is ignored: the labels are ``X.purchased``)."""
        if len(X) == 0 or not X.purchased.any():
            raise ModelError("cannot train on a log without purchases")
        self.__dict__.pop(_TABLES, None)  # a refit model scores with its new parameters
        users, user_rows = np.unique(X.user_id, return_inverse=True)
        items, item_rows = np.unique(X.item_id, return_inverse=True)
        labels = X.purchased.astype(np.float64)

        # Cross-fitting: embeddings from the earlier part score the later part for the calibration.
        early, late = self._calibration_split(X)
        tastes_early = self._factorize(
            user_rows[early], item_rows[early], labels[early], len(users), len(items)
        )
        features = self._features(user_rows[late], item_rows[late], *tastes_early)
        calibrator = LogisticRegression(C=10.0, max_iter=1000)
        calibrator.fit(features, X.purchased[late])

        self.user_index_ = {u: i for i, u in enumerate(users.tolist())}
        self.item_index_ = {v: i for i, v in enumerate(items.tolist())}
        self.user_factors_, self.item_factors_, self.user_rate_, self.item_rate_ = self._factorize(
            user_rows, item_rows, labels, len(users), len(items)
        )
        self.global_rate_ = float(labels.mean())
        self.calibrator_ = calibrator
        self.coef_ = calibrator.coef_.ravel().astype(np.float64)
        self.intercept_ = float(calibrator.intercept_[0])

        if self.threshold == "auto":
            p = _sigmoid(features @ self.coef_ + self.intercept_)
            self.threshold_, _ = ranking.best_threshold(p, X.purchased[late], X.session[late], self.k)
        else:
            self.threshold_ = None if self.threshold is None else float(self.threshold)
        return self

    def _calibration_split(self, X: Interactions) -> tuple[np.ndarray, np.ndarray]:
        _, late = X.split_by_time(self.calibration_fraction)
        late_sessions = np.isin(X.session, np.unique(late.session))
        if not X.purchased[late_sessions].any() or not X.purchased[~late_sessions].any():
            raise ModelError("the training log is too small to calibrate: a time slice has no purchases")
        return ~late_sessions, late_sessions

    def _factorize(
        self, user_rows: np.ndarray, item_rows: np.ndarray, y: np.ndarray, n_users: int, n_items: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user embeddings, item embeddings, user rates, item rates), each with an extra last row for
        the unknown user or item (zero embedding, global rate)."""
        prior = float(y.mean())
        item_rate = smoothed_rates(item_rows, y, n_items, prior, self.prior_strength)
        user_rate = smoothed_rates(user_rows, y, n_users, prior, self.prior_strength)
        dim = min(self.n_components, min(n_users, n_items) - 1)
        if dim >= 1:
            residual = sp.csr_matrix((y - item_rate[item_rows], (user_rows, item_rows)), (n_users, n_items))
            shown = sp.csr_matrix((np.ones_like(y), (user_rows, item_rows)), (n_users, n_items))
            residual.sum_duplicates()
            shown.sum_duplicates()
            # Same sparsity pattern (both built from the same cells), so the data arrays align.
            residual.data /= shown.data
            svd = TruncatedSVD(dim, random_state=self.random_state)
            user_f = svd.fit_transform(residual)
            item_f = svd.components_.T
        else:
            user_f, item_f = np.zeros((n_users, 1)), np.zeros((n_items, 1))
        user_f = np.vstack([user_f, np.zeros((1, user_f.shape[1]))])
        item_f = np.vstack([item_f, np.zeros((1, item_f.shape[1]))])
        return user_f, item_f, np.r_[user_rate, prior], np.r_[item_rate, prior]

    @staticmethod
    def _features(
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        user_f: np.ndarray,
        item_f: np.ndarray,
        user_rate: np.ndarray,
        item_rate: np.ndarray,
    ) -> np.ndarray:
        taste = np.einsum("nd,nd->n", user_f[user_rows], item_f[item_rows])
        return np.column_stack([taste, _logit(item_rate[item_rows]), _logit(user_rate[user_rows])])

    # ------------------------------------------------------------------ scoring
    def score_pairs(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Purchase probability of each (user, item) pair, as one flat array."""
        self._check_fitted()
        users = ranking.lookup(self.user_index_, user_ids, len(self.user_index_))
        items = ranking.lookup(self.item_index_, item_ids, len(self.item_index_))
        return _sigmoid(self._logits(users, items))

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per request, the purchase probability of each candidate: one vectorized pass over the batch."""
        if len(user_ids) != len(candidates):
            raise ModelError(f"{len(user_ids)} users but {len(candidates)} candidate lists")
        self._check_fitted()
        users = ranking.lookup(self.user_index_, user_ids, len(self.user_index_))
        flat_items = list(chain.from_iterable(candidates))
        items = ranking.lookup(self.item_index_, flat_items, len(self.item_index_))
        sizes = list(map(len, candidates))
        size = ranking.common_size(sizes)
        if size:  # the storefront's usual batch: a row of candidates per user, no user repeated per item
            return list(_sigmoid(self._logits(users, items.reshape(len(sizes), size))))
        return ranking.split_sizes(_sigmoid(self._logits(np.repeat(users, sizes), items)), sizes)

    def _logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The calibrated logit of each (user row, item row) pair: ``items`` holds one row per user (flat
        pairs) or a row of candidates per user (a 2-D batch)."""
        user_table, item_table = self._tables()
        spec = "nd,nd->n" if items.ndim == 1 else "nd,nmd->nm"
        logits: np.ndarray = np.einsum(spec, user_table.take(users, axis=0), item_table.take(items, axis=0))
        return logits

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) whose dot product is the calibrated logit of the pair.

        The calibration is linear in (taste, logit item rate, logit user rate), so it folds into the
        embeddings once per model: ``[coef * user factors, user term + intercept, 1]`` against
        ``[item factors, 1, item term]``. Scoring is then two row gathers and a dot product rather than a
        dozen numpy calls, whose fixed cost is most of a live replica's small batches. Built at first use
        and kept out of the pickle (:meth:`__getstate__`): a stored model is what it was, and models
        stored before the tables existed load and score as they are."""
        tables: tuple[np.ndarray, np.ndarray] | None = self.__dict__.get(_TABLES)
        if tables is None:
            taste, item_weight, user_weight = self.coef_.tolist()
            users = np.column_stack(
                [
                    self.user_factors_ * taste,
                    user_weight * _logit(self.user_rate_) + self.intercept_,
                    np.ones(len(self.user_rate_)),
                ]
            )
            items = np.column_stack(
                [self.item_factors_, np.ones(len(self.item_rate_)), item_weight * _logit(self.item_rate_)]
            )
            tables = self.__dict__[_TABLES] = (users, items)
        return tables

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        if _TABLES in state:  # derived from the fitted attributes, rebuilt at first use after loading
            state = {name: value for name, value in state.items() if name != _TABLES}
        return state

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ModelError("the recommender has not been fitted")

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the fitted model."""
        self._check_fitted()
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": self.get_params(),
            "users": len(self.user_index_),
            "items": len(self.item_index_),
            "threshold": self.threshold_,
            "calibration": {"coef": self.coef_.tolist(), "intercept": self.intercept_},
        }
