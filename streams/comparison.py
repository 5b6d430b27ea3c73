"""The anytime-valid comparison of a candidate version with the incumbent: one experiment's statistics.

**What is compared.** Each labelled request (a prediction joined with its outcome) gets the *per-request
F1* of its recommendations, ``2 tp / (2 tp + fp + fn)`` over its candidate items (README, "What the metrics
mean"), and 0 when that is 0 / 0 (nothing recommended, nothing bought): scikit-learn's
``f1_score(average="samples", zero_division=0)`` over the requests' item labels. Per request rather than the
monitor's micro-averaged window F1 because the method needs i.i.d. observations with a mean; F1 rather
than precision because precision per request is undefined when nothing is recommended and rewards a
version that recommends less; it lies in [0, 1], so every moment exists.

**Two modes.** *Shadow*: both versions answered the same requests, so the observations are the paired
values and the comparison is on their differences (the requests' own difficulty cancels). *Canary*: the
two arms saw different users, two independent samples whose units are the *users* (the split is by user,
and a user's requests are alike): each arm's mean is a ratio of per-user sums and its variance comes from
the users by the delta method, as GrowthBook analyses user-randomised experiments. Counting requests as
independent there wrongly aborted 13% of 300 A/A canaries in the simulation (alpha 0.05, 2,000 users).

**The method** is the asymptotic confidence sequence (CS) of Waudby-Smith, Arnold, Wu, McAuliffe and
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (arXiv 2103.06476; rho as
its appendix chooses it, to be tightest at a given N), built on the normal-mixture boundary of Howard,
Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences" (Annals
of Statistics, 2021), exactly as GrowthBook computes its sequential intervals (gbstats
``SequentialTwoSidedTTest``; docs/statistics/sequential). For an estimate with standard error ``se`` from
``N`` units (pairs in shadow mode, the users of both arms in canary mode), with ``s2 = se**2 * N``::

    halfwidth = sqrt(s2) * sqrt(2 (N rho^2 + 1) / (N^2 rho^2) * ln(sqrt(N rho^2 + 1) / alpha))
    rho^2     = (-2 ln alpha + ln(1 - 2 ln alpha)) / tuning

``tuning`` is the ``N`` at which the sequence is tightest (GrowthBook's default 5,000). The guarantee:
for i.i.d. observations with finite variance, the intervals contain the true difference at *every* ``N``
at once with probability at least ``1 - alpha`` (asymptotically in the start time, as the CLT is), so the
monitor may look after every batch and stop whenever it likes. ``burn_in`` keeps the first requests, when
the variance estimate is still poor, out of any decision; the simulation in
:mod:`services.bench.experiments` measures what the guarantee gives on the world's traffic.

**The regression adjustment** (canary mode, when the caller knows the users' pre-experiment periods): a
user's difficulty (some users are easy to recommend to) puts a floor under a canary's interval that more
requests do not lower, and it is visible before the experiment. So, as GrowthBook's CUPED does for ratio
metrics (gbstats ``RegressionAdjustedRatioStatistic``; Deng, Xu, Kohavi and Walker, "Improving the
sensitivity of online controlled experiments by utilizing pre-experiment data", WSDM 2013), each arm's
mean ``Y = sum s_u / sum n_u`` is adjusted by the same users' pre-period mean ``X = sum p_u / sum q_u``
(``s_u, n_u``: user u's sum of per-request F1 and requests in the experiment; ``p_u, q_u``: before it, 0
and 0 for a user without a pre-period)::

    estimate = (Y_c - w Y_i) - theta (X_c - X_i)
    se^2     = sum over arms of U/(U-1) sum_u r_u^2,  r_u = w_a (s_u - Y n_u)/n - theta (p_u - X q_u)/q
    theta    = (C_c + C_i) / (V_c + V_i),  per arm C = sum_u a_u b_u / (U-1), V = sum_u b_u^2 / (U-1)
               with a_u = (s_u - Y n_u) / (n/U), b_u = (p_u - X q_u) / (q/U)

(``w_c = 1``, ``w_i = w``; ``n``, ``q`` the arm's requests in and before the experiment, ``U`` its users):
the delta method on each arm's four per-user sums, and theta pooled over the arms as gbstats'
``compute_theta_regression_adjusted_ratio``. The pre-periods precede the experiment, so ``X_c - X_i`` has
mean 0 whatever the candidate does and the estimate stays unbiased; ``tests/unit/test_comparison.py``
reproduces GrowthBook's published ``test_sequential_test_runs_ratio_ra``. Without pre-periods theta is 0
and this is the plain delta method above.

**The decision** uses the same sequence on the non-inferiority contrast ``candidate - (1 - margin) *
incumbent``, linear in the two means, so the margin needs no plug-in estimate of the incumbent: *abort*
as soon as its whole interval lies below 0 (the candidate is worse than the incumbent by more than the
margin), *promote* once its whole interval lies above 0 and each arm has ``min_samples``, *inconclusive*
once ``max_duration_s`` of event time has passed. Hence P(abort | the candidate is within the margin) and
P(promote | it is worse than the margin) are each at most ``alpha``. A decision is final.

The state (:mod:`streams.moments`), updated a batch at a time with numpy: O(1) in shadow mode; in canary
mode two numbers per user besides the sums (four for a user with a pre-period). :meth:`Comparison.to_dict`
gives a JSON-able dict for a changelogged table, :meth:`Comparison.from_dict` reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from schemas.errors import ExperimentError
from services.config import ExperimentSettings
from streams.moments import PairedMoments, PrePeriod, UserMoments

#: The compared metric's name, as the experiment event carries it.
METRIC = "f1_per_request"


class Mode(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"


class Decision(StrEnum):
    RUNNING = "running"
    PROMOTE = "promote"
    ABORT = "abort"
    INCONCLUSIVE = "inconclusive"


def request_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-request F1 of arrays of item counts; 0 where nothing was recommended and nothing bought."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    if (tp < 0).any() or (fp < 0).any() or (fn < 0).any():
        raise ExperimentError("request counts must not be negative")
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def mixture_rho(alpha: float, tuning: float) -> float:
    """The normal mixture's spread that makes the sequence tightest at ``tuning`` observations."""
    log_alpha = math.log(alpha)
    return math.sqrt((-2 * log_alpha + math.log(1 - 2 * log_alpha)) / tuning)


def sequence_halfwidth(s2: float, n: int, alpha: float, rho: float) -> float:
    """Half-width of the two-sided asymptotic CS after ``n`` observations of per-observation variance s2."""
    nr2 = n * rho * rho
    return math.sqrt(s2) * math.sqrt(2 * (nr2 + 1) / (nr2 * n) * math.log(math.sqrt(nr2 + 1) / alpha))


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence-sequence interval."""

    estimate: float
    low: float
    high: float


def _values(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
        raise ExperimentError(f"{name}: per-request F1 values must be finite numbers in [0, 1]")
    return array


def _users(name: str, users: Any, values: np.ndarray) -> np.ndarray:
    keys = np.asarray(users).astype(str).ravel()
    if len(keys) != len(values):
        raise ExperimentError(f"{name}: one user per value: {len(values)} values, {len(keys)} users")
    return keys


def _check_pre_period(pre_period: Mapping[str, PrePeriod], users: list[np.ndarray]) -> None:
    for user in np.concatenate(users).tolist():
        if user not in pre_period:
            continue
        try:
            total, requests = (float(x) for x in pre_period[user])
        except (TypeError, ValueError) as exc:
            raise ExperimentError(f"pre-period of {user}: not a (sum, requests) pair: {exc}") from exc
        if not (math.isfinite(total) and requests == int(requests) and 0 <= total <= requests):
            raise ExperimentError(
                f"pre-period of {user}: a sum of per-request F1 in [0, requests] over a whole number of "
                f"requests, not {pre_period[user]!r}"
            )


@dataclass
class Comparison:
    """One experiment's running comparison; feed it batches of labelled requests, read its decision."""

    mode: Mode
    settings: ExperimentSettings = field(default_factory=ExperimentSettings)
    #: Event time (ms) the experiment started; the first batch's when not given.
    started_ms: int | None = None
    latest_ms: int | None = None
    decision: Decision = Decision.RUNNING
    decided_ms: int | None = None
    reason: str = ""
    candidate: UserMoments = field(default_factory=UserMoments)
    incumbent: UserMoments = field(default_factory=UserMoments)
    pairs: PairedMoments = field(default_factory=PairedMoments)

    # -- feeding it ------------------------------------------------------------------------------------

    def add_paired(self, candidate: Any, incumbent: Any, event_ms: int) -> Decision:
        """Shadow: the two versions' per-request F1 on the same requests, in the same order."""
        if self.mode is not Mode.SHADOW:
            raise ExperimentError("paired values belong to a shadow experiment, this one is a canary")
        c, i = _values("candidate", candidate), _values("incumbent", incumbent)
        if len(c) != len(i):
            raise ExperimentError(f"shadow values must pair up: {len(c)} candidate, {len(i)} incumbent")
        if self.decision is Decision.RUNNING:
            self.pairs.add(c, i)
        return self._advance(event_ms)

    def add_arms(
        self,
        candidate: Any,
        candidate_users: Any,
        incumbent: Any,
        incumbent_users: Any,
        event_ms: int,
        pre_period: Mapping[str, PrePeriod] | None = None,
    ) -> Decision:
        """Canary: the per-request F1 of each arm's newly labelled requests (either may be empty), and
        the user of each request. ``pre_period`` optionally maps users to their pre-experiment period,
        ``(sum of per-request F1, labelled requests)`` before the experiment started: the covariate of
        the regression adjustment, read for a user when the user first appears (others have none)."""
        if self.mode is not Mode.CANARY:
            raise ExperimentError("two independent arms belong to a canary experiment, this one is a shadow")
        c, i = _values("candidate", candidate), _values("incumbent", incumbent)
        c_users, i_users = _users("candidate", candidate_users, c), _users("incumbent", incumbent_users, i)
        if pre_period:  # read only for users new to their arm: checked only for them
            _check_pre_period(pre_period, [self.candidate.unseen(c_users), self.incumbent.unseen(i_users)])
        if self.decision is Decision.RUNNING:
            self.candidate.add(c, c_users, pre_period)
            self.incumbent.add(i, i_users, pre_period)
        return self._advance(event_ms)

    def tick(self, event_ms: int) -> Decision:
        """Event time moved with no new labelled request (the deadline may have passed)."""
        return self._advance(event_ms)

    # -- reading it ------------------------------------------------------------------------------------

    @property
    def labelled(self) -> tuple[int, int]:
        """Labelled requests of the candidate and of the incumbent."""
        if self.mode is Mode.SHADOW:
            return self.pairs.n, self.pairs.n
        return self.candidate.n, self.incumbent.n

    @property
    def means(self) -> tuple[float, float]:
        if self.mode is Mode.SHADOW:
            return self.pairs.candidate, self.pairs.incumbent
        return self.candidate.mean, self.incumbent.mean

    def difference(self) -> Interval | None:
        """Candidate minus incumbent, with its interval; ``None`` during the burn-in."""
        return self._contrast(1.0)

    def noninferiority(self) -> Interval | None:
        """``candidate - (1 - margin) * incumbent``, whose interval decides; ``None`` during the burn-in."""
        return self._contrast(1.0 - self.settings.margin)

    def _contrast(self, weight: float) -> Interval | None:
        n_c, n_i = self.labelled
        if min(n_c, n_i) < self.settings.burn_in:
            return None
        mean_c, mean_i = self.means
        estimate = mean_c - weight * mean_i
        if self.mode is Mode.SHADOW:
            n, s2 = n_c, self.pairs.contrast_variance(weight)
        else:
            # The units are the users (GrowthBook's N is its users too): s2 is per user. Adjusted by the
            # users' pre-periods when they are known (theta 0 otherwise: the plain delta method).
            theta = self.theta
            estimate -= theta * (self.candidate.pre_mean - self.incumbent.pre_mean)
            n = self.candidate.users + self.incumbent.users
            se2 = self.candidate.linearized(1.0, theta) + self.incumbent.linearized(weight, theta)
            s2 = se2 * n
        rho = mixture_rho(self.settings.alpha, self.settings.tuning)
        half = sequence_halfwidth(s2, n, self.settings.alpha, rho)
        return Interval(estimate, estimate - half, estimate + half)

    @property
    def theta(self) -> float:
        """The regression adjustment's coefficient (canary mode), pooled over the arms as GrowthBook's
        ``compute_theta_regression_adjusted_ratio``: 0 until both arms have users with a pre-period."""
        if self.mode is Mode.SHADOW or not (self.candidate.sum_q and self.incumbent.sum_q):
            return 0.0
        cov_c, var_c = self.candidate.pre_moments()
        cov_i, var_i = self.incumbent.pre_moments()
        return (cov_c + cov_i) / (var_c + var_i) if var_c + var_i > 0 else 0.0

    # -- deciding --------------------------------------------------------------------------------------

    def _advance(self, event_ms: int) -> Decision:
        if self.started_ms is None:
            self.started_ms = event_ms
        # The caller's event-time clock (the monitor's watermark): only ever moves forward.
        self.latest_ms = event_ms if self.latest_ms is None else max(self.latest_ms, event_ms)
        if self.decision is not Decision.RUNNING:
            return self.decision
        contrast = self.noninferiority()
        s = self.settings
        if contrast is not None and contrast.high < 0:
            self._decide(Decision.ABORT, f"worse than the incumbent by more than the margin {s.margin:g}")
        elif contrast is not None and contrast.low > 0 and min(self.labelled) >= s.min_samples:
            self._decide(Decision.PROMOTE, f"no worse than the incumbent within the margin {s.margin:g}")
        elif self.elapsed_s >= s.max_duration_s:
            self._decide(Decision.INCONCLUSIVE, f"undecided after {s.max_duration_s:g} s of event time")
        return self.decision

    def _decide(self, decision: Decision, why: str) -> None:
        self.decision, self.decided_ms = decision, self.latest_ms
        n_c, n_i = self.labelled
        contrast = self.noninferiority()
        shown = "" if contrast is None else f", interval [{contrast.low:.4f}, {contrast.high:.4f}]"
        self.reason = (
            f"{decision.value}: {why} ({METRIC}, candidate - {1 - self.settings.margin:g} x incumbent"
            f"{shown}; {n_c} candidate and {n_i} incumbent labelled requests, alpha {self.settings.alpha:g})"
        )

    @property
    def elapsed_s(self) -> float:
        if self.started_ms is None or self.latest_ms is None:
            return 0.0
        return (self.latest_ms - self.started_ms) / 1000

    # -- keeping it ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as a small JSON-able dict (a changelogged table's value)."""
        return {
            "mode": self.mode.value,
            "settings": self.settings.model_dump(),
            "started_ms": self.started_ms,
            "latest_ms": self.latest_ms,
            "decision": self.decision.value,
            "decided_ms": self.decided_ms,
            "reason": self.reason,
            "candidate": self.candidate.as_dict(),
            "incumbent": self.incumbent.as_dict(),
            "pairs": vars(self.pairs).copy(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Comparison:
        try:
            return cls(
                mode=Mode(state["mode"]),
                settings=ExperimentSettings(**state["settings"]),
                started_ms=state["started_ms"],
                latest_ms=state["latest_ms"],
                decision=Decision(state["decision"]),
                decided_ms=state["decided_ms"],
                reason=state["reason"],
                candidate=UserMoments.from_dict(state["candidate"]),
                incumbent=UserMoments.from_dict(state["incumbent"]),
                pairs=PairedMoments(**state["pairs"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ExperimentError(f"not a comparison state: {exc}") from exc

    def event(
        self, *, experiment_id: str, candidate: str, incumbent: str, traffic: float, ts: int
    ) -> dict[str, Any]:
        """The experiment event (``rec.experiments``) saying where this comparison stands."""
        n_c, n_i = self.labelled
        mean_c, mean_i = self.means
        event: dict[str, Any] = {
            "experiment_id": experiment_id,
            "mode": self.mode.value,
            "candidate": candidate,
            "incumbent": incumbent,
            "traffic": traffic,
            "labelled": {"candidate": n_c, "incumbent": n_i},
            "metric": METRIC,
            "estimate": mean_c - mean_i if min(n_c, n_i) else None,
            "interval": None,
            "decision": self.decision.value,
            "ts": ts,
            "means": {"candidate": mean_c if n_c else None, "incumbent": mean_i if n_i else None},
            "alpha": self.settings.alpha,
            "margin": self.settings.margin,
            "margin_interval": None,
        }
        difference, contrast = self.difference(), self.noninferiority()
        if difference is not None:
            # The interval's own centre: with pre-periods, the adjusted difference, not the raw means'.
            event["estimate"] = difference.estimate
            event["interval"] = [difference.low, difference.high]
        if contrast is not None:
            event["margin_interval"] = [contrast.low, contrast.high]
        if self.started_ms is not None:
            event["started_ts"] = self.started_ms
        if self.reason:
            event["reason"] = self.reason
        return event
