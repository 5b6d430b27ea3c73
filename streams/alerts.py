"""Alert rules, judged at each metrics emission of a model version: firing, then resolved.

A rule (``[[alerts]]`` in the config, :class:`~services.config.AlertRule`) breaches when its metric on its
window is below the threshold: absolute (``below``) or a relative drop from the version's baseline in its
registry manifest (``below_baseline``); a rule with ``above`` (the error rate) breaches above it. It does
not judge before the window holds ``min_samples`` requests, nor when the metric is undefined. It fires
after ``for`` consecutive breaching evaluations, once, and resolves when the metric is back above
``resolve_above`` (hysteresis) or, without it, at or above the threshold (an ``above`` rule: at or below).

The alert_id is derived from the rule, the version and the position (labelled requests so far) of the
first breach of the streak that fired, so an alert judged again after a crash carries the same id.

:class:`DriftWatch` is the optional early warning: river's ADWIN on a version's per-request error rate
raises a ``drift`` alert when the error rate shifts up, before a threshold is crossed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.config import AlertRule, Settings

log = logging.getLogger(__name__)

MAX_ID = 256


def alert_id(rule: str, version: str, position: int, epoch: str | None = None) -> str:
    """The deterministic id of the alert that ``rule`` fired on ``version`` at ``position``, in the
    deployment ``epoch`` (a short token of the command that began it; ``None`` for a version that has no
    command on the history)."""
    where = version if epoch is None else f"{version}:{epoch}"
    readable = f"{rule}:{where}:{position}"
    if len(readable) <= MAX_ID:
        return readable
    return f"{rule[:64]}:{hashlib.sha256(readable.encode()).hexdigest()}:{position}"


@dataclass
class AlertState:
    """One rule's state on one version; persisted with the version's windows."""

    firing: bool = False
    alert_id: str | None = None
    streak: int = 0  # consecutive breaching evaluations
    streak_start: int | None = None  # position of the streak's first breach

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertState:
        return cls(**d)


#: ``baseline(version, metric)`` -> (value, why there is none)
Baseline = Callable[[str, str], tuple[float | None, str | None]]


def no_baseline(version: str, metric: str) -> tuple[float | None, str | None]:
    return None, "no registry baseline is configured"


def threshold_of(rule: AlertRule, version: str, baseline: Baseline) -> tuple[float | None, str | None]:
    """The rule's threshold for ``version``, or why it has none (the rule then does not judge)."""
    if rule.below is not None:
        return rule.below, None
    if rule.above is not None:
        return rule.above, None
    assert rule.below_baseline is not None
    value, why = baseline(version, rule.metric)
    if value is None:
        return None, why
    return value * (1.0 - rule.below_baseline), None


def judge(
    rule: AlertRule,
    state: AlertState,
    *,
    version: str,
    value: float | None,
    n: int,
    position: int,
    threshold: float | None,
    ts: int,
    epoch: str | None = None,
) -> dict[str, Any] | None:
    """Judge one evaluation; return the alert event of a transition (firing or resolved), if any.

    ``n`` is the number of requests in the rule's window and ``position`` the version's labelled requests
    so far; ``epoch`` the version's deployment epoch. ``state`` is updated in place.
    """
    if threshold is None or value is None or n < rule.min_samples:
        return None  # no judgement: the streak neither grows nor breaks
    above = rule.above is not None
    if not state.firing:
        if (value <= threshold) if above else (value >= threshold):
            state.streak, state.streak_start = 0, None
            return None
        if state.streak == 0:
            state.streak_start = position
        state.streak += 1
        if state.streak < rule.for_:
            return None
        state.firing = True
        start = position if state.streak_start is None else state.streak_start
        state.alert_id = alert_id(rule.name, version, start, epoch)
        return _event(rule, state.alert_id, "firing", version, value, threshold, n, position, ts)
    level = rule.resolve_above if rule.resolve_above is not None else threshold
    if above:
        resolved = value <= level
    else:
        resolved = value > level if rule.resolve_above is not None else value >= level
    if not resolved:
        return None
    event = _event(rule, state.alert_id or "", "resolved", version, value, level, n, position, ts)
    state.firing, state.alert_id, state.streak, state.streak_start = False, None, 0, None
    return event


def direction(rule: AlertRule) -> str:
    """Which side of its threshold breaches the rule: ``below`` or ``above``."""
    return "above" if rule.above is not None else "below"


def ended(
    rule: AlertRule,
    state: AlertState,
    *,
    version: str,
    value: float | None,
    threshold: float | None,
    n: int,
    position: int,
    ts: int,
    cause: str,
    why: str,
) -> dict[str, Any] | None:
    """The resolved event of a firing alert that ends without the metric's help: its version is no longer
    served (``cause`` "not_served") or is deployed afresh ("redeployed"), ``why`` says so in words.
    ``None`` if it is not firing. ``state`` is reset."""
    if not state.firing:
        return None
    level = threshold if threshold is not None else (rule.below or rule.above or 0.0)
    event = _event(rule, state.alert_id or "", "resolved", version, value, level, n, position, ts)
    event["message"] = f"{rule.name} on {version} ends: {why}"
    event["cause"] = cause
    state.firing, state.alert_id, state.streak, state.streak_start = False, None, 0, None
    return event


def _event(
    rule: AlertRule,
    aid: str,
    state: str,
    version: str,
    value: float | None,
    threshold: float,
    n: int,
    position: int,
    ts: int,
) -> dict[str, Any]:
    if value is None:
        message = f"{rule.metric} on the {rule.window} window of {version} is undefined (n={n})"
    elif state == "firing":
        message = (
            f"{rule.metric} on the {rule.window} window of {version} is {value:.4f}, {direction(rule)} "
            f"{threshold:.4f} for {rule.for_} evaluation(s) (n={n})"
        )
    else:
        message = f"{rule.metric} on the {rule.window} window of {version} is back at {value:.4f} (n={n})"
    return {
        "alert_id": aid,
        "rule": rule.name,
        "state": state,
        "model_version": version,
        "metric": rule.metric,
        "value": value,
        "threshold": threshold,
        "ts": ts,
        "severity": rule.severity,
        "action": rule.action,
        "message": message,
        "direction": direction(rule),
        # Not in the schema's required set: where the judgement was made, for readers who check it.
        "window": rule.window,
        "n": n,
        "total": position,
    }


class DriftWatch:
    """ADWIN on one version's per-request error rate (wrong items / candidate items).

    Fires a ``drift`` warning when ADWIN finds the error rate has shifted up, resolves it when a later
    shift brings it back down. ADWIN's own buckets are not persisted; after a restart it is warmed up again
    from the requests in the count window, without raising alerts.
    """

    RULE = "drift"

    def __init__(self, delta: float) -> None:
        from river.drift import ADWIN  # imported here: river is slow to import and drift is optional

        self.adwin = ADWIN(delta=delta)
        self.state = AlertState()

    def update(
        self, error: float, *, version: str, position: int, ts: int, quiet: bool = False
    ) -> dict | None:
        before = self.adwin.estimation
        self.adwin.update(error)
        if quiet or not self.adwin.drift_detected:
            return None
        after = self.adwin.estimation
        if after > before and not self.state.firing:
            self.state.firing = True
            self.state.alert_id = alert_id(self.RULE, version, position)
            state, message = "firing", f"error rate of {version} shifted up from {before:.4f} to {after:.4f}"
        elif after < before and self.state.firing:
            state, message = "resolved", f"error rate of {version} shifted back down to {after:.4f}"
        else:
            return None
        event = {
            "alert_id": self.state.alert_id,
            "rule": self.RULE,
            "state": state,
            "model_version": version,
            "metric": "error_rate",
            "value": after,
            "threshold": before,
            "ts": ts,
            "severity": "warning",
            "action": "notify",
            "message": message,
            "total": position,
        }
        if state == "resolved":
            self.state = AlertState()
        return event

    def end(self, *, version: str, position: int, ts: int, why: str) -> dict[str, Any]:
        """The resolved event of a firing drift warning whose version's epoch ended (``why``)."""
        event = {
            "alert_id": self.state.alert_id,
            "rule": self.RULE,
            "state": "resolved",
            "model_version": version,
            "metric": "error_rate",
            "value": self.adwin.estimation,
            "threshold": self.adwin.estimation,
            "ts": ts,
            "severity": "warning",
            "action": "notify",
            "message": f"drift on {version} ends: {why}",
            "total": position,
        }
        self.state = AlertState()
        return event


class RegistryBaselines:
    """Each version's baseline metrics from its registry manifest, looked up lazily and cached.

    When the registry (``services.registry``) or the version is missing, baseline rules do not judge that
    version; the reason is logged once and the lookup is tried again after ``retry_s``.
    """

    def __init__(self, settings: Settings, retry_s: float = 60.0) -> None:
        self.settings = settings
        self.retry_s = retry_s
        self._cache: dict[str, tuple[dict[str, float | None] | None, str | None, float]] = {}

    def _load(self, version: str) -> tuple[dict[str, float | None] | None, str | None]:
        try:
            from services.registry import Registry  # another part of modelwatch; may be absent
        except ImportError as exc:
            return None, f"the model registry is not available ({exc})"
        try:
            manifest = Registry.from_settings(self.settings).manifest(version)
        except Exception as exc:  # VersionNotFound, VerificationError, an unreachable store: all mean "none"
            return None, f"no baseline for {version} in the registry: {exc}"
        return dict(manifest.metrics), None

    def __call__(self, version: str, metric: str) -> tuple[float | None, str | None]:
        now = time.monotonic()
        cached = self._cache.get(version)
        if cached is None or (cached[0] is None and now - cached[2] > self.retry_s):
            metrics, why = self._load(version)
            if why is not None and (cached is None or cached[1] != why):
                log.warning("baseline rules do not judge %s: %s", version, why)
            cached = (metrics, why, now)
            self._cache[version] = cached
        metrics, why, _ = cached
        if metrics is None:
            return None, why
        value = metrics.get(metric)
        if value is None:
            return None, f"the manifest of {version} has no {metric}"
        return float(value), None
