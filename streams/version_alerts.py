"""A version's alert rules on its windows (:class:`streams.tracker.VersionTracker`): judged at each emission,
ended when the version is no longer judged, and which of them fire now.

Each rule (:class:`~services.config.AlertRule`) judges the snapshot of its window kind through its own
state on the version (:class:`streams.alerts.AlertState`, in ``VersionTracker.alerts`` and its meta
record), against a threshold that may be relative to the version's baseline
(:func:`streams.alerts.threshold_of`). Only the deployment epoch counted now is judged
(:mod:`streams.epochs`): the firing alerts end when another version is served (the tracker is retired) or
when the version is deployed again, before its windows start afresh. What fires is what the rollback
decisions (:mod:`streams.decisions`), Alertmanager and the exposition ask for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.config import AlertRule
from streams.alerts import AlertState, Baseline, direction, ended, judge, threshold_of
from streams.epochs import epoch_token

if TYPE_CHECKING:
    from streams.tracker import VersionTracker

#: An alert transition with the rule that made it (``None`` for the drift warning).
Transition = tuple[AlertRule | None, dict[str, Any]]


def _reading(
    tracker: VersionTracker, rule: AlertRule, snap: dict[str, Any], baseline: Baseline
) -> dict[str, Any]:
    """What a rule is judged on in its window's snapshot ``snap``: the metric's value, the requests it is
    taken over, the version's position, the threshold (maybe relative to the baseline) and the time."""
    threshold, _why = threshold_of(rule, tracker.version, baseline)
    return {
        "version": tracker.version,
        "value": snap[rule.metric],
        "n": snap["error_n" if rule.metric == "error_rate" else "n"],
        "position": tracker.total,
        "threshold": threshold,
        "ts": snap["ts"],
    }


def judged(
    tracker: VersionTracker, by_kind: dict[str, dict[str, Any]], baseline: Baseline
) -> list[Transition]:
    """The transitions of the tracker's rules, each judging the snapshot of its window kind (``by_kind``)."""
    out: list[Transition] = []
    for rule in tracker.config.rules:
        state = tracker.alerts.setdefault(rule.name, AlertState())
        reading = _reading(tracker, rule, by_kind[rule.window], baseline)
        event = judge(rule, state, **reading, epoch=epoch_token(tracker.epoch))
        if event is not None:
            out.append((rule, event))
    return out


def ended_alerts(tracker: VersionTracker, why: str, cause: str, baseline: Baseline) -> list[Transition]:
    """The end of the tracker's firing alerts (the drift warning too), ``why`` and ``cause`` saying why."""
    out: list[Transition] = []
    by_kind = {kind: tracker.snapshot(kind) for kind in ("count", "time")}
    for rule in tracker.config.rules:
        state = tracker.alerts.setdefault(rule.name, AlertState())
        reading = _reading(tracker, rule, by_kind[rule.window], baseline)
        event = ended(rule, state, **reading, cause=cause, why=why)
        if event is not None:
            out.append((rule, event))
    if tracker.drift is not None and tracker.drift.state.firing:
        drift = tracker.drift.end(
            version=tracker.version, position=tracker.total, ts=by_kind["count"]["ts"], why=why
        )
        out.append((None, drift))
    return out


def firing(tracker: VersionTracker, action: str | None = None) -> list[str]:
    """Names of the rules firing now (of ``action`` only, if given)."""
    actions = {r.name: r.action for r in tracker.config.rules}
    return [
        name
        for name, s in tracker.alerts.items()
        if s.firing and (action is None or actions.get(name) == action)
    ]


def firing_alerts(tracker: VersionTracker, action: str, baseline: Baseline) -> list[dict[str, Any]]:
    """The firing alerts of ``action``'s rules, each with its metric's value now (for a decision that
    is taken again after the firing event was sent)."""
    out = []
    for rule in tracker.config.rules:
        state = tracker.alerts.get(rule.name)
        if rule.action != action or state is None or not state.firing or state.alert_id is None:
            continue
        threshold, _why = threshold_of(rule, tracker.version, baseline)
        out.append(
            {
                "alert_id": state.alert_id,
                "rule": rule.name,
                "model_version": tracker.version,
                "metric": rule.metric,
                "value": tracker.snapshot(rule.window)[rule.metric],
                "threshold": threshold,
                "direction": direction(rule),
            }
        )
    return out
