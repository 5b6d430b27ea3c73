"""Running moments of an experiment's observations, updated a batch at a time with numpy.

:class:`PairedMoments` (shadow mode) is O(1): the count, the two means, their sums of squared deviations and
their co-moment, merged batch by batch with Chan, Golub and LeVeque's pairwise update of Welford's (exact,
and stable over long experiments). :class:`UserMoments` (one canary arm) keeps its sums over users plus
two numbers per user seen (requests, sum of values), which those sums need in order to grow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class UserMoments:
    """One canary arm: its labelled requests summed per user, the unit the split randomises.

    A canary sends a share of *users* to the candidate, and a user's requests are alike (their tastes), so
    requests are not independent draws: an arm's mean is a ratio of per-user sums, and its variance comes
    from the users (the delta method), not from the requests. With one request per user this is the plain
    sample variance over n. The per-user totals are what the sums need to grow incrementally.
    """

    n: int = 0
    total: float = 0.0
    #: Over users u with n_u requests summing to s_u: sum of s_u^2, of s_u n_u, of n_u^2.
    sum_s2: float = 0.0
    sum_sn: float = 0.0
    sum_n2: float = 0.0
    #: The users seen (sorted), and each one's requests and their sum: arrays, so a batch is numpy work.
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    user_n: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    user_s: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def add(self, values: np.ndarray, users: np.ndarray) -> None:
        if not len(values):
            return
        batch_keys, inverse = np.unique(users, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(batch_keys))
        sums = np.bincount(inverse, weights=values, minlength=len(batch_keys))
        at = np.searchsorted(self.keys, batch_keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == batch_keys[known]
        if not known.all():
            new = batch_keys[~known]
            merged = np.concatenate([self.keys, new])
            order = np.argsort(merged, kind="stable")
            self.keys = merged[order]
            self.user_n = np.concatenate([self.user_n, np.zeros(len(new), dtype=np.int64)])[order]
            self.user_s = np.concatenate([self.user_s, np.zeros(len(new))])[order]
            at = np.searchsorted(self.keys, batch_keys)
        n0, s0 = self.user_n[at], self.user_s[at]
        n1, s1 = n0 + counts, s0 + sums
        self.sum_s2 += float((s1 * s1 - s0 * s0).sum())
        self.sum_sn += float((s1 * n1 - s0 * n0).sum())
        self.sum_n2 += float((n1 * n1 - n0 * n0).sum())
        self.user_n[at], self.user_s[at] = n1, s1
        self.n += len(values)
        self.total += float(values.sum())

    @property
    def users(self) -> int:
        return len(self.keys)

    def as_dict(self) -> dict[str, Any]:
        sums = {k: getattr(self, k) for k in ("n", "total", "sum_s2", "sum_sn", "sum_n2")}
        return sums | {
            "users": {
                k: [int(n), float(s)]
                for k, n, s in zip(self.keys.tolist(), self.user_n, self.user_s, strict=True)
            }
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> UserMoments:
        users = sorted(state["users"].items())
        return cls(
            n=int(state["n"]),
            total=float(state["total"]),
            sum_s2=float(state["sum_s2"]),
            sum_sn=float(state["sum_sn"]),
            sum_n2=float(state["sum_n2"]),
            keys=np.array([str(k) for k, _ in users], dtype=str),
            user_n=np.array([int(v[0]) for _, v in users], dtype=np.int64),
            user_s=np.array([float(v[1]) for _, v in users], dtype=np.float64),
        )

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def mean_variance(self) -> float:
        """Variance of the arm's mean: sum over users of (s_u - mean n_u)^2 / n^2, times U / (U - 1)."""
        u = self.users
        if u < 2:
            return 0.0
        m = self.mean
        residuals = self.sum_s2 - 2 * m * self.sum_sn + m * m * self.sum_n2
        return u / (u - 1) * max(residuals, 0.0) / (self.n * self.n)


@dataclass
class PairedMoments:
    """Moments of the candidate's and the incumbent's values on the same requests, and their co-moment."""

    n: int = 0
    candidate: float = 0.0
    incumbent: float = 0.0
    m2_candidate: float = 0.0
    m2_incumbent: float = 0.0
    comoment: float = 0.0

    def add(self, candidate: np.ndarray, incumbent: np.ndarray) -> None:
        k = len(candidate)
        if not k:
            return
        mean_c, mean_i = float(candidate.mean()), float(incumbent.mean())
        dev_c, dev_i = candidate - mean_c, incumbent - mean_i
        total = self.n + k
        delta_c, delta_i = mean_c - self.candidate, mean_i - self.incumbent
        weight = self.n * k / total
        self.m2_candidate += float(dev_c @ dev_c) + delta_c * delta_c * weight
        self.m2_incumbent += float(dev_i @ dev_i) + delta_i * delta_i * weight
        self.comoment += float(dev_c @ dev_i) + delta_c * delta_i * weight
        self.candidate += delta_c * k / total
        self.incumbent += delta_i * k / total
        self.n = total

    def contrast_variance(self, weight: float) -> float:
        """Sample variance of ``candidate - weight * incumbent`` per request."""
        if self.n < 2:
            return 0.0
        m2 = self.m2_candidate + weight * weight * self.m2_incumbent - 2 * weight * self.comoment
        return max(m2, 0.0) / (self.n - 1)  # rounding can leave a tiny negative for identical arms
