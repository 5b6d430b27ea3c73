"""The monitor's alerts, posted to Alertmanager's v2 API (``POST <url>/api/v2/alerts``) in the background.

Alertmanager identifies an alert by its labels: ``alertname`` (the rule), ``model`` (``model_name``),
``model_version`` and ``severity``. Annotations carry what a person reads: the metric, its value and
threshold, the rollback the monitor decided, the message and the ``alert_id`` of ``rec.alerts``.

Alertmanager's convention for clients (prometheus.io, "Sending alerts"): re-send an alert as long as it
is active, and give ``endsAt`` once it is known; an alert not heard of again ends by itself at its
``endsAt`` (or ``resolve_timeout`` after it was last received). As Prometheus does, a firing alert is
posted with ``endsAt`` four re-send intervals ahead and posted again every ``resend_s``; a resolved one
once, with ``endsAt`` now. A monitor that dies thus stops its alerts after four intervals, not never.

Times are the monitor's clock (processing time): they tell Alertmanager when the monitor said so, and
Alertmanager compares them with its own clock. The alert's event time (the storefront's clock, which may
be anything) is an annotation, never ``startsAt``.

Never blocking the stream. :meth:`AlertSender.transition` and :meth:`AlertSender.firing_now` only put a
message on a queue; one daemon thread posts. While Alertmanager is down it retries with backoff
(:func:`services.kafka.retry.retry`, tenacity), taking in what came meanwhile at each attempt, so nothing
is lost and the latest state goes out once it is back. A rejected post (HTTP 4xx: a bad alert) is logged
and dropped rather than retried forever.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.kafka.retry import retry

log = logging.getLogger("modelwatch.monitor")

#: A firing alert's endsAt lies this many re-send intervals ahead (Prometheus uses 4).
ENDS_AFTER_RESENDS = 4


class AlertmanagerUnavailable(Exception):
    """Alertmanager did not take a post (unreachable, or an HTTP 5xx): tried again."""


@dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager sees it (labels identify it), with the monitor's ``alert_id``."""

    alert_id: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # the monitor's clock, seconds
    ends_at: float | None = None  # known once it resolved

    def payload(self, now: float, resend_s: float) -> dict[str, Any]:
        ends = self.ends_at if self.ends_at is not None else now + ENDS_AFTER_RESENDS * resend_s
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": _rfc3339(self.starts_at),
            "endsAt": _rfc3339(ends),
        }


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    if value is None:
        return "undefined"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def alert_of(event: Mapping[str, Any], model: str, now: float) -> Alert:
    """The Alertmanager alert of an alert event (as on ``rec.alerts``), first seen at ``now``."""
    annotations = {
        "alert_id": str(event["alert_id"]),
        "metric": str(event["metric"]),
        "value": _text(event.get("value")),
        "threshold": _text(event.get("threshold")),
        "rollback": rollback_decided(event),
        "event_time_ms": str(event["ts"]),
    }
    if event.get("message"):
        annotations["summary"] = str(event["message"])
    if event.get("window"):
        annotations["window"] = str(event["window"])
    labels = {
        "alertname": str(event["rule"]),
        "model": model,
        "model_version": str(event["model_version"]),
        "severity": str(event.get("severity") or "warning"),
    }
    return Alert(str(event["alert_id"]), labels, annotations, starts_at=now)


def rollback_decided(event: Mapping[str, Any]) -> str:
    """What the monitor decided about a rollback when the alert fired, in words.

    The decision is appended to a firing alert's message after ``"; "`` (:mod:`streams.decisions`); a
    rule's own message has no ``";"``.
    """
    if event.get("action") != "rollback":
        return "none: the rule notifies only"
    if event.get("state") == "resolved":
        return "none: resolved"
    _, sep, decision = str(event.get("message", "")).partition("; ")
    return decision if sep else "as decided when it fired (see the alert topic)"


@dataclass
class _State:
    firing: dict[str, Alert] = field(default_factory=dict)  # alert_id -> alert
    resolved: list[Alert] = field(default_factory=list)  # to post once
    changed: bool = False  # something new to post now, without waiting for the re-send


class AlertSender:
    """Posts alerts to one Alertmanager from a daemon thread; the caller never waits for it."""

    def __init__(
        self,
        url: str,
        *,
        resend_s: float = 60.0,
        timeout_s: float = 5.0,
        retry_max_s: float = 30.0,
        first_retry_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.resend_s = resend_s
        self.timeout_s = timeout_s
        self.retry_max_s = retry_max_s
        self.first_retry_s = first_retry_s
        self.clock = clock
        self.posted = 0  # successful posts, for tests and the log
        self.failed = 0  # attempts that found Alertmanager unreachable
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state = _State()
        self._thread = threading.Thread(target=self._run, name="alertmanager", daemon=True)

    # -- from the event loop -----------------------------------------------------------------------------

    def transition(self, event: Mapping[str, Any], model: str) -> None:
        """An alert event the monitor sent on ``rec.alerts`` (firing or resolved)."""
        self._inbox.put(("transition", (dict(event), model, self.clock())))
        self._wake.set()

    def firing_now(self, alerts: Iterable[Alert]) -> None:
        """Every alert firing now on this worker's versions: re-sent while they fire. Alerts this sender
        has not seen fire (a restarted monitor's, a version that moved here) are taken in; those no longer
        listed without a resolution (moved to another worker) are no longer re-sent by this one."""
        self._inbox.put(("firing", list(alerts)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop, posting what is pending once more first (waiting at most ``timeout_s``, default the post's
        own timeout): a monitor stopped by SIGTERM must not leave a resolved alert firing in Alertmanager
        until its endsAt, four re-send intervals later."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1 if timeout_s is None else timeout_s)

    # -- the sender's thread -----------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        state = self._state
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "firing":
                known = state.firing
                state.firing = {a.alert_id: known.get(a.alert_id, a) for a in item}
                state.changed = state.changed or any(a.alert_id not in known for a in item)
                continue
            event, model, seen = item
            alert = alert_of(event, model, seen)
            if event["state"] == "firing":
                state.firing[alert.alert_id] = alert
            else:
                fired = state.firing.pop(alert.alert_id, None)
                starts = fired.starts_at if fired is not None else seen
                state.resolved.append(replace(alert, starts_at=starts, ends_at=max(seen, starts)))
            state.changed = True

    def _run(self) -> None:
        next_resend = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_resend - self.clock()))
            self._wake.clear()
            self._take_inbox()
            state = self._state
            if not state.changed and self.clock() < next_resend:
                continue
            if not state.firing and not state.resolved:
                state.changed = False
                next_resend = self.clock() + self.resend_s
                continue
            retry(
                self._post_once,
                retry_on=(AlertmanagerUnavailable,),
                retry_max_s=self.retry_max_s,
                on_retry=self._on_retry,
                stop=self._stop,
                first_s=self.first_retry_s,
            )
            next_resend = self.clock() + self.resend_s
        self._last_post()

    def _last_post(self) -> None:
        # Once, no retry: stopping must not wait out an Alertmanager that is down.
        self._take_inbox()
        if self._state.resolved or self._state.changed:
            try:
                self._post_once(0)
            except AlertmanagerUnavailable as exc:
                log.warning(
                    "alertmanager unreachable at shutdown; %d resolution(s) not posted: %s",
                    len(self._state.resolved),
                    exc,
                )

    def _post_once(self, attempt: int) -> None:
        """Post the resolved alerts not posted yet and every firing one (with what came in meanwhile)."""
        self._take_inbox()
        state, now = self._state, self.clock()
        resolved = len(state.resolved)
        batch = state.resolved + list(state.firing.values())  # resolved first: a re-fire comes after
        body = json.dumps([a.payload(now, self.resend_s) for a in batch]).encode()
        request = urllib.request.Request(
            self.endpoint, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise AlertmanagerUnavailable(f"HTTP {exc.code} from {self.endpoint}") from exc
            detail = exc.read().decode(errors="replace")[:500]
            log.error("alertmanager refused %d alert(s) (HTTP %d): %s; dropped", len(batch), exc.code, detail)
        except (OSError, urllib.error.URLError) as exc:
            raise AlertmanagerUnavailable(f"{self.endpoint}: {exc}") from exc
        else:
            self.posted += 1
            if attempt > 1 or state.changed:
                log.info("alertmanager took %d alert(s) (%d firing)", len(batch), len(state.firing))
        del state.resolved[:resolved]  # posted (or refused): only this thread appends to it
        state.changed = False

    def _on_retry(self, attempt: int, wait_s: float, error: BaseException) -> None:
        self.failed += 1
        log.warning("alertmanager unreachable (attempt %d, again in %.1fs): %s", attempt, wait_s, error)
