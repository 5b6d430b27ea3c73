"""The report's events put in order once: versions and their colours, markers, alert spans, replica lanes.

:class:`Story` is what :mod:`services.ops.chart` draws and :mod:`services.ops.report` tabulates, so the
picture and the table can never disagree on what happened when.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from services.deployment.experiments import STARTING, experiment_id_of

Window = Literal["count", "time"]
Event = dict[str, Any]

METRICS = ("accuracy", "precision", "recall", "f1")

#: Version lines take these colours in order of first appearance; the marker colours below stay apart.
VERSION_COLOURS = (
    "#1f77b4",
    "#9467bd",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#6b6ecf",
    "#ce6dbd",
)
DEPLOY = "#222222"
ROLLBACK = "#e8710a"
FIRING = "#d62728"
RESOLVED = "#2ca02c"
ACK = "#8a8a8a"
#: The commands of an experiment: starting it (shadow, canary) and promoting it; an abort is a rollback's
#: colour (everyone back to the incumbent).
EXPERIMENT = "#6a3d9a"
EXPERIMENT_ACTIONS = frozenset({"shadow", "canary", "promote", "abort"})


def when(ts_ms: int) -> datetime:
    # Naive local wall-clock time: matplotlib shows it as is, the same clock `modelwatch tail` prints.
    return datetime.fromtimestamp(ts_ms / 1000)


def clock(ts_ms: int) -> str:
    return when(ts_ms).strftime("%H:%M:%S.%f")[:-3]


def fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


@dataclass(frozen=True)
class Marker:
    ts: int
    label: str
    colour: str
    style: str
    width: float


class Story:
    """The events put in order once, for the picture and the table alike."""

    def __init__(
        self,
        metrics: Sequence[Event],
        alerts: Sequence[Event],
        commands: Sequence[Event],
        model_events: Sequence[Event],
        window: Window,
        experiments: Sequence[Event] = (),
    ) -> None:
        self.window = window
        #: The experiment events (``rec.experiments``), in event time.
        self.experiments = sorted(experiments, key=event_ts)
        of_kind = [m for m in metrics if m["window"]["kind"] == window]
        # One size per picture: if the monitor was reconfigured mid-way, the commonest size wins.
        sizes = Counter(m["window"]["size"] for m in of_kind)
        self.window_size: int | None = sizes.most_common(1)[0][0] if sizes else None
        self.metrics = sorted((m for m in of_kind if m["window"]["size"] == self.window_size), key=event_ts)
        self.alerts = sorted(alerts, key=event_ts)
        self.commands = sorted(commands, key=event_ts)
        self.acks = sorted((e for e in model_events if e["event"] != "heartbeat"), key=event_ts)
        self.heartbeats = sorted((e for e in model_events if e["event"] == "heartbeat"), key=event_ts)
        self.command_ts = {c["command_id"]: c["ts"] for c in self.commands}

        versions: list[str] = []
        for e in sorted([*self.commands, *self.metrics, *self.acks], key=event_ts):
            v = e.get("model_version")
            if v and v not in versions:
                versions.append(v)
        # Versions with metrics get the first colours: those are the lines people compare.
        measured = {m["model_version"] for m in self.metrics}
        self.versions = [v for v in versions if v in measured] + [v for v in versions if v not in measured]
        self.colour = {v: VERSION_COLOURS[i % len(VERSION_COLOURS)] for i, v in enumerate(self.versions)}
        self.instances = sorted({e["instance"] for e in [*self.acks, *self.heartbeats]})

        stamps = [
            e["ts"]
            for e in [
                *self.metrics,
                *self.alerts,
                *self.commands,
                *self.acks,
                *self.heartbeats,
                *self.experiments,
            ]
        ]
        self.start = min(stamps) if stamps else None
        self.end = max(stamps) if stamps else None

    def acks_of(self, command_id: str) -> list[Event]:
        return [a for a in self.acks if a.get("command_id") == command_id]

    def markers(self) -> list[Marker]:
        out: list[Marker] = []
        for c in self.commands:
            acks = self.acks_of(c["command_id"])
            ok = [a for a in acks if a["event"] == "activated"]
            label = command_label(c)
            if acks:
                slowest = max(a["ts"] - c["ts"] for a in acks)
                label += f"\n{len(ok)}/{len(acks)} acks, last +{seconds(slowest)}"
            if c["action"] in ("rollback", "abort"):
                out.append(Marker(c["ts"], label, ROLLBACK, "-", 2.2))
            elif c["action"] in EXPERIMENT_ACTIONS:
                out.append(Marker(c["ts"], label, EXPERIMENT, "-", 1.6))
            else:
                out.append(Marker(c["ts"], label, DEPLOY, "-", 1.6))
        for a in self.alerts:
            if a["state"] == "firing":
                label = f"alert {a['rule']} firing: {a['model_version']}\n"
                label += f"{a['metric']} {fmt(a['value'])} < {fmt(a['threshold'])}"
                out.append(Marker(a["ts"], label, FIRING, "--", 1.6))
            else:
                label = f"alert {a['rule']} resolved: {a['model_version']}"
                out.append(Marker(a["ts"], label, RESOLVED, "--", 1.6))
        return sorted(out, key=lambda m: m.ts)

    def intervals(self) -> dict[str, list[Event]]:
        """Per experiment, its events with an interval (after the burn-in), in event time: the
        comparison narrowing until its decision."""
        out: dict[str, list[Event]] = {}
        for e in self.experiments:
            if e.get("interval") is not None and e.get("estimate") is not None:
                out.setdefault(e["experiment_id"], []).append(e)
        return out

    def firing_spans(self) -> list[tuple[Event, int]]:
        """Each firing alert with the time it resolved (or the end of the picture)."""
        spans: list[tuple[Event, int]] = []
        for a in self.alerts:
            if a["state"] != "firing":
                continue
            resolved = next(
                (
                    r["ts"]
                    for r in self.alerts
                    if r["state"] == "resolved" and r["alert_id"] == a["alert_id"] and r["ts"] >= a["ts"]
                ),
                None,
            )
            spans.append((a, resolved if resolved is not None else (self.end or a["ts"])))
        return spans

    def lanes(self) -> dict[str, list[tuple[int, int, str]]]:
        """Per replica, (from, to, version) segments: what it served when, from acks and heartbeats."""
        lanes: dict[str, list[tuple[int, int, str]]] = {}
        for instance in self.instances:
            seen = [
                e
                for e in [*self.acks, *self.heartbeats]
                if e["instance"] == instance and (e["event"] != "rejected") and e.get("model_version")
            ]
            seen.sort(key=event_ts)
            has_heartbeats = any(e["event"] == "heartbeat" for e in seen)
            last = max(e["ts"] for e in seen) if has_heartbeats and seen else (self.end or 0)
            segments: list[tuple[int, int, str]] = []
            for e in seen:
                v = e["model_version"]
                if segments and segments[-1][2] == v:
                    continue
                if segments:
                    segments[-1] = (segments[-1][0], e["ts"], segments[-1][2])
                segments.append((e["ts"], last, v))
            lanes[instance] = segments
        return lanes


def short_id(experiment_id: str) -> str:
    """An experiment id short enough for a label (``e-c-fa917e7e…-canary``); the page gives it whole."""
    return experiment_id if len(experiment_id) <= 20 else f"{experiment_id[:12]}…{experiment_id[-7:]}"


def command_label(c: Event) -> str:
    """``canary v2 at 0.2`` and, for an experiment's command, the experiment and who issued it."""
    label = f"{c['action']} {c['model_version']}"
    if c.get("traffic") is not None:
        label += f" at {c['traffic']:g}"
    if c["action"] in STARTING:
        label += f"\nexperiment {short_id(experiment_id_of(c))}"
    elif c["action"] in EXPERIMENT_ACTIONS and c.get("experiment_id"):
        label += f"\nexperiment {short_id(c['experiment_id'])}"
    if c["action"] in EXPERIMENT_ACTIONS:
        label += f" by {c.get('issued_by', 'unknown')}"
    return label


def event_ts(e: Event) -> int:
    return int(e["ts"])
