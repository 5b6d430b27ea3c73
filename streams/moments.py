"""Running moments of an experiment's observations, updated a batch at a time with numpy.

:class:`PairedMoments` (shadow mode) is O(1): the count, the two means, their sums of squared deviations and
their co-moment, merged batch by batch with Chan, Golub and LeVeque's pairwise update of Welford's (exact,
and stable over long experiments). :class:`UserMoments` (one canary arm) keeps its sums over users plus
two numbers per user seen (requests, sum of values), which those sums need in order to grow, and, when the
caller knows it, the user's pre-experiment period (labelled requests and their sum, fixed): the covariate
of the regression adjustment (CUPED) in :mod:`streams.comparison`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A user's pre-experiment period: (sum of the per-request values, labelled requests).
PrePeriod = tuple[float, int]

#: The sums over an arm's users kept besides ``n`` and ``total``; s, n the user's sum and requests in the
#: experiment, p, q the sum and requests of the user's pre-experiment period.
_SUMS = (
    "sum_s2",
    "sum_sn",
    "sum_n2",
    "sum_p",
    "sum_q",
    "sum_p2",
    "sum_pq",
    "sum_q2",
    "sum_sp",
    "sum_sq",
    "sum_np",
    "sum_nq",
)


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
    #: Over the same users, with p_u, q_u their pre-period sum and requests (0, 0 for a user without one):
    #: the sums of p_u, q_u and of the products the regression adjustment's variance needs.
    sum_p: float = 0.0
    sum_q: float = 0.0
    sum_p2: float = 0.0
    sum_pq: float = 0.0
    sum_q2: float = 0.0
    sum_sp: float = 0.0
    sum_sq: float = 0.0
    sum_np: float = 0.0
    sum_nq: float = 0.0
    #: The users seen (sorted), and each one's requests and their sum: arrays, so a batch is numpy work.
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    user_n: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    user_s: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    #: Each user's pre-period sum and requests, taken when the user first appears and fixed from then on.
    user_p: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    user_q: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(
        self, values: np.ndarray, users: np.ndarray, pre_period: Mapping[str, PrePeriod] | None = None
    ) -> None:
        """Add a batch of values and their users; ``pre_period`` gives new users' pre-experiment periods
        (users it does not name have none)."""
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
            new_p, new_q = _pre_periods(new, pre_period)
            self.sum_p += float(new_p.sum())
            self.sum_q += float(new_q.sum())
            self.sum_p2 += float(new_p @ new_p)
            self.sum_pq += float(new_p @ new_q)
            self.sum_q2 += float(new_q @ new_q)
            merged = np.concatenate([self.keys, new])
            order = np.argsort(merged, kind="stable")
            self.keys = merged[order]
            self.user_n = np.concatenate([self.user_n, np.zeros(len(new), dtype=np.int64)])[order]
            self.user_s = np.concatenate([self.user_s, np.zeros(len(new))])[order]
            self.user_p = np.concatenate([self.user_p, new_p])[order]
            self.user_q = np.concatenate([self.user_q, new_q])[order]
            at = np.searchsorted(self.keys, batch_keys)
        n0, s0 = self.user_n[at], self.user_s[at]
        n1, s1 = n0 + counts, s0 + sums
        p, q = self.user_p[at], self.user_q[at]
        self.sum_s2 += float((s1 * s1 - s0 * s0).sum())
        self.sum_sn += float((s1 * n1 - s0 * n0).sum())
        self.sum_n2 += float((n1 * n1 - n0 * n0).sum())
        self.sum_sp += float(sums @ p)
        self.sum_sq += float(sums @ q)
        self.sum_np += float(counts @ p)
        self.sum_nq += float(counts @ q)
        self.user_n[at], self.user_s[at] = n1, s1
        self.n += len(values)
        self.total += float(values.sum())

    @property
    def users(self) -> int:
        return len(self.keys)

    def unseen(self, users: np.ndarray) -> np.ndarray:
        """The distinct users among ``users`` that this arm has not seen yet."""
        batch_keys = np.unique(users)
        at = np.searchsorted(self.keys, batch_keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == batch_keys[known]
        out: np.ndarray = batch_keys[~known]
        return out

    def as_dict(self) -> dict[str, Any]:
        """Sums and per-user ``[requests, sum]``, with ``, pre sum, pre requests`` for a user who has a
        pre-period (so a state without covariates reads as before)."""
        sums = {k: getattr(self, k) for k in ("n", "total", *_SUMS)}
        users = zip(self.keys.tolist(), self.user_n, self.user_s, self.user_p, self.user_q, strict=True)
        return sums | {
            "users": {k: [int(n), float(s)] + ([float(p), int(q)] if q else []) for k, n, s, p, q in users}
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> UserMoments:
        users = sorted(state["users"].items())
        return cls(
            n=int(state["n"]),
            total=float(state["total"]),
            # A state written before the covariate has no pre-period sums: 0, as for users without one.
            **{k: float(state.get(k, 0.0)) for k in _SUMS},
            keys=np.array([str(k) for k, _ in users], dtype=str),
            user_n=np.array([int(v[0]) for _, v in users], dtype=np.int64),
            user_s=np.array([float(v[1]) for _, v in users], dtype=np.float64),
            user_p=np.array([float(v[2]) if len(v) > 2 else 0.0 for _, v in users], dtype=np.float64),
            user_q=np.array([int(v[3]) if len(v) > 3 else 0 for _, v in users], dtype=np.int64),
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

    @property
    def pre_mean(self) -> float:
        """The arm's users' pre-period mean (their pre-period sums over their pre-period requests)."""
        return self.sum_p / self.sum_q if self.sum_q else 0.0

    def linearized(self, weight: float, theta: float) -> float:
        """Variance of ``weight * mean - theta * pre_mean`` by the delta method over users: the sum over
        users of r_u^2 times U / (U - 1), with r_u = weight (s_u - mean n_u) / n - theta (p_u - pre_mean
        q_u) / q, where n and q are the arm's requests in the experiment and in the pre-period."""
        u = self.users
        if u < 2:
            return 0.0
        m, x = self.mean, self.pre_mean
        aa = (self.sum_s2 - 2 * m * self.sum_sn + m * m * self.sum_n2) / (self.n * self.n)
        if not self.sum_q:
            return u / (u - 1) * weight * weight * max(aa, 0.0)
        bb = (self.sum_p2 - 2 * x * self.sum_pq + x * x * self.sum_q2) / (self.sum_q * self.sum_q)
        ab = (self.sum_sp - m * self.sum_np - x * self.sum_sq + m * x * self.sum_nq) / (self.n * self.sum_q)
        total = weight * weight * aa - 2 * weight * theta * ab + theta * theta * bb
        return u / (u - 1) * max(total, 0.0)

    def pre_moments(self) -> tuple[float, float]:
        """Per-user covariance of the linearized experiment and pre-period means, and the pre-period's
        variance: GrowthBook's ``covariance`` and ``var_pre`` of a regression-adjusted ratio (at theta 1,
        up to sign), which its theta pools over the arms."""
        u = self.users
        if u < 2 or not self.sum_q:
            return 0.0, 0.0
        m, x = self.mean, self.pre_mean
        n_bar, q_bar = self.n / u, self.sum_q / u
        ab = (self.sum_sp - m * self.sum_np - x * self.sum_sq + m * x * self.sum_nq) / (n_bar * q_bar)
        bb = (self.sum_p2 - 2 * x * self.sum_pq + x * x * self.sum_q2) / (q_bar * q_bar)
        return ab / (u - 1), max(bb, 0.0) / (u - 1)


def _pre_periods(
    users: np.ndarray, pre_period: Mapping[str, PrePeriod] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The pre-period (sum, requests) of each new user; (0, 0) for users the mapping does not name."""
    p, q = np.zeros(len(users)), np.zeros(len(users), dtype=np.int64)
    if not pre_period:
        return p, q
    for at, user in enumerate(users.tolist()):
        if user in pre_period:
            p[at], q[at] = pre_period[user]
    return p, q


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
