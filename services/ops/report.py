"""``modelwatch report``: what happened and when, as a picture (PNG) and a self-contained HTML page.

The picture has one panel per metric (accuracy, precision, recall, F1) with a line per model version over
time, vertical markers for deploys and rollbacks (from the command topic), alerts firing and resolved, and
the replicas' activation acks, each labelled in a strip on top; a shaded band while an alert fires; and a
lane per replica at the bottom showing which version it served when.

:func:`draw_report` takes plain lists of events, so the demo and the tests can call it with what they hold;
:func:`read_report_events` and :func:`write_report` are the thin reading layer over the four topics.
Drawing uses matplotlib's Agg canvas directly (no pyplot): no display, no global figure state.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from schemas import codec
from schemas.errors import ContractError
from services import kafka
from services.config import Settings

Window = Literal["count", "time"]
Event = dict[str, Any]

METRICS = ("accuracy", "precision", "recall", "f1")
TOPICS = {
    "metrics": "metrics",
    "alerts": "alert",
    "model-commands": "model-command",
    "model-events": "model-event",
}

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


@dataclass(frozen=True)
class ReportFiles:
    png: Path
    html: Path


@dataclass
class ReportEvents:
    """The decoded events of the four topics, and why any message could not be read."""

    metrics: list[Event] = field(default_factory=list)
    alerts: list[Event] = field(default_factory=list)
    commands: list[Event] = field(default_factory=list)
    model_events: list[Event] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def read_report_events(settings: Settings, timeout: float = 10.0) -> ReportEvents:
    """Read rec.metrics, rec.alerts, rec.model-commands and rec.model-events whole; bad messages are
    skipped and counted, never fatal."""
    found = ReportEvents()
    lists = {
        "metrics": found.metrics,
        "alerts": found.alerts,
        "model-commands": found.commands,
        "model-events": found.model_events,
    }
    for suffix, event in TOPICS.items():
        for value in _read_values(settings, settings.topic(suffix), timeout):
            try:
                lists[suffix].append(codec(event).decode(value))
            except ContractError as exc:
                found.unreadable.append(f"{settings.topic(suffix)}: {exc}")
    return found


def _read_values(settings: Settings, topic: str, timeout: float) -> list[bytes | None]:
    return [value for _key, value, _ts in kafka.read_topic(settings, topic, timeout=timeout)]


def write_report(
    settings: Settings, out_dir: Path | str = ".", *, window: Window = "count", timeout: float = 10.0
) -> ReportFiles:
    """Read the four topics and draw the report into ``out_dir``."""
    found = read_report_events(settings, timeout=timeout)
    return draw_report(
        found.metrics,
        found.alerts,
        found.commands,
        found.model_events,
        out_dir,
        window=window,
        title=f"modelwatch report: {settings.topic_prefix}* on {settings.bootstrap_servers}",
        unreadable=found.unreadable,
    )


# -- drawing ----------------------------------------------------------------------------------------------


def _when(ts_ms: int) -> datetime:
    # Naive local wall-clock time: matplotlib shows it as is, the same clock `modelwatch tail` prints.
    return datetime.fromtimestamp(ts_ms / 1000)


def _clock(ts_ms: int) -> str:
    return _when(ts_ms).strftime("%H:%M:%S.%f")[:-3]


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


@dataclass(frozen=True)
class _Marker:
    ts: int
    label: str
    colour: str
    style: str
    width: float


class _Story:
    """The events put in order once, for the picture and the table alike."""

    def __init__(
        self,
        metrics: Sequence[Event],
        alerts: Sequence[Event],
        commands: Sequence[Event],
        model_events: Sequence[Event],
        window: Window,
    ) -> None:
        self.window = window
        of_kind = [m for m in metrics if m["window"]["kind"] == window]
        # One size per picture: if the monitor was reconfigured mid-way, the commonest size wins.
        sizes = Counter(m["window"]["size"] for m in of_kind)
        self.window_size: int | None = sizes.most_common(1)[0][0] if sizes else None
        self.metrics = sorted((m for m in of_kind if m["window"]["size"] == self.window_size), key=_ts)
        self.alerts = sorted(alerts, key=_ts)
        self.commands = sorted(commands, key=_ts)
        self.acks = sorted((e for e in model_events if e["event"] != "heartbeat"), key=_ts)
        self.heartbeats = sorted((e for e in model_events if e["event"] == "heartbeat"), key=_ts)
        self.command_ts = {c["command_id"]: c["ts"] for c in self.commands}

        versions: list[str] = []
        for e in sorted([*self.commands, *self.metrics, *self.acks], key=_ts):
            v = e.get("model_version")
            if v and v not in versions:
                versions.append(v)
        # Versions with metrics get the first colours: those are the lines people compare.
        measured = {m["model_version"] for m in self.metrics}
        self.versions = [v for v in versions if v in measured] + [v for v in versions if v not in measured]
        self.colour = {v: VERSION_COLOURS[i % len(VERSION_COLOURS)] for i, v in enumerate(self.versions)}
        self.instances = sorted({e["instance"] for e in [*self.acks, *self.heartbeats]})

        stamps = [
            e["ts"] for e in [*self.metrics, *self.alerts, *self.commands, *self.acks, *self.heartbeats]
        ]
        self.start = min(stamps) if stamps else None
        self.end = max(stamps) if stamps else None

    def acks_of(self, command_id: str) -> list[Event]:
        return [a for a in self.acks if a.get("command_id") == command_id]

    def markers(self) -> list[_Marker]:
        out: list[_Marker] = []
        for c in self.commands:
            acks = self.acks_of(c["command_id"])
            ok = [a for a in acks if a["event"] == "activated"]
            label = f"{c['action']} {c['model_version']}"
            if acks:
                slowest = max(a["ts"] - c["ts"] for a in acks)
                label += f"\n{len(ok)}/{len(acks)} acks, last +{_seconds(slowest)}"
            if c["action"] == "rollback":
                out.append(_Marker(c["ts"], label, ROLLBACK, "-", 2.2))
            else:
                out.append(_Marker(c["ts"], label, DEPLOY, "-", 1.6))
        for a in self.alerts:
            if a["state"] == "firing":
                label = f"alert {a['rule']} firing: {a['model_version']}\n"
                label += f"{a['metric']} {_fmt(a['value'])} < {_fmt(a['threshold'])}"
                out.append(_Marker(a["ts"], label, FIRING, "--", 1.6))
            else:
                label = f"alert {a['rule']} resolved: {a['model_version']}"
                out.append(_Marker(a["ts"], label, RESOLVED, "--", 1.6))
        return sorted(out, key=lambda m: m.ts)

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
            seen.sort(key=_ts)
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


def _ts(e: Event) -> int:
    return int(e["ts"])


def render_png(
    metrics: Sequence[Event],
    alerts: Sequence[Event],
    commands: Sequence[Event],
    model_events: Sequence[Event],
    *,
    window: Window = "count",
    title: str = "modelwatch report",
) -> bytes:
    """The report picture as PNG bytes."""
    return _render(_Story(metrics, alerts, commands, model_events, window), title)


def _render(story: _Story, title: str) -> bytes:
    if story.start is None or story.end is None:
        fig = Figure(figsize=(13, 2.5), dpi=100, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        fig.suptitle(title, fontsize=12, x=0.01, ha="left")
        fig.text(
            0.5,
            0.45,
            "No metrics, alerts, commands or replica events on these topics yet.",
            ha="center",
            va="center",
            fontsize=14,
        )
        return _png(fig, canvas)

    lanes = story.lanes()
    lane_rows = max(1, len(lanes))
    heights = [1.25, *([2.0] * len(METRICS)), 0.35 + 0.3 * lane_rows]
    fig = Figure(figsize=(13, 3.2 + sum(heights) * 1.25), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    strip, panels, lane_ax = axes[0], list(axes[1:-1]), axes[-1]

    if story.window_size is not None:
        unit = "labelled requests" if story.window == "count" else "s of event time"
        subtitle = f"rolling metrics per model version, {story.window} window of {story.window_size} {unit}"
    else:
        subtitle = f"no {story.window}-window metrics yet"
    subtitle += f"  ·  {_when(story.start):%Y-%m-%d %H:%M:%S} to {_when(story.end):%H:%M:%S} (local time)"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=12, x=0.01, ha="left")

    pad = max(1000, (story.end - story.start) * 0.02)
    x0, x1 = _when(int(story.start - pad)), _when(int(story.end + pad))
    markers = story.markers()
    spans = story.firing_spans()

    for name, ax in zip(METRICS, panels, strict=True):
        _metric_panel(ax, name, story, markers, spans)
    _lane_panel(lane_ax, lanes, story)

    locator = AutoDateLocator()
    lane_ax.xaxis.set_major_locator(locator)
    lane_ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    lane_ax.set_xlim(x0, x1)
    lane_ax.set_xlabel("time (local)")

    handles: list[Any] = [
        Line2D([], [], color=story.colour[v], lw=2.2, marker="o", ms=4, label=f"version {v}")
        for v in story.versions
    ]
    handles += [
        Line2D([], [], color=DEPLOY, lw=1.6, label="deploy"),
        Line2D([], [], color=ROLLBACK, lw=2.2, label="rollback"),
        Line2D([], [], color=FIRING, lw=1.6, ls="--", label="alert firing"),
        Line2D([], [], color=RESOLVED, lw=1.6, ls="--", label="alert resolved"),
        Line2D([], [], color=ACK, lw=1, ls=":", label="replica activated (ack)"),
        Patch(facecolor=FIRING, alpha=0.12, label="while an alert fires"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    # Last: the labels are placed by measuring them in the final layout and limits.
    _marker_strip(strip, markers, canvas, fig)
    return _png(fig, canvas)


def _png(fig: Figure, canvas: FigureCanvasAgg) -> bytes:
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    fig.clear()
    return buffer.getvalue()


def _verticals(ax: Any, markers: list[_Marker], acks: list[Event]) -> None:
    for a in acks:
        ax.axvline(
            _when(a["ts"]), color=FIRING if a["event"] == "rejected" else ACK, lw=0.9, ls=":", zorder=1
        )
    for m in markers:
        ax.axvline(_when(m.ts), color=m.colour, ls=m.style, lw=m.width, zorder=2)


def _metric_panel(
    ax: Any, name: str, story: _Story, markers: list[_Marker], spans: list[tuple[Event, int]]
) -> None:
    label = "F1" if name == "f1" else name
    ax.set_ylabel(label, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    for alert, until in spans:
        ax.axvspan(_when(alert["ts"]), _when(until), color=FIRING, alpha=0.08, lw=0, zorder=0)
    _verticals(ax, markers, story.acks)
    values: list[float] = []
    for v in story.versions:
        points = [m for m in story.metrics if m["model_version"] == v]
        if not points:
            continue
        xs, ys = _with_gaps(points, name)
        values += [y for y in ys if y == y]
        ax.plot(xs, ys, color=story.colour[v], lw=2.2, marker="o", ms=3 if len(points) < 80 else 0, zorder=3)
    for alert, until in spans:
        if alert["metric"] == name:
            ax.hlines(
                alert["threshold"], _when(alert["ts"]), _when(until), colors=FIRING, linestyles="--", lw=1.2
            )
            ax.annotate(
                f"{alert['rule']} threshold {alert['threshold']:.2f}",
                (date2num(_when(alert["ts"])), alert["threshold"]),
                xytext=(4, -11),
                textcoords="offset points",
                fontsize=8,
                color=FIRING,
            )
            values.append(float(alert["threshold"]))
    if values:
        low, high = min(values), max(values)
        margin = max(0.03, (high - low) * 0.12)
        ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    else:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, f"no {label} values", ha="center", va="center", transform=ax.transAxes, alpha=0.6)


def _with_gaps(points: list[Event], name: str) -> tuple[list[datetime], list[float]]:
    """The series of one version, broken (NaN) where it went quiet: a line across a time the version
    served nothing would suggest values nobody measured."""
    stamps = [int(m["ts"]) for m in points]
    steps = sorted(b - a for a, b in pairwise(stamps) if b > a)
    quiet = 3 * steps[len(steps) // 2] if len(steps) >= 2 else None
    xs: list[datetime] = []
    ys: list[float] = []
    for i, m in enumerate(points):
        if quiet is not None and i and stamps[i] - stamps[i - 1] > quiet:
            xs.append(_when((stamps[i] + stamps[i - 1]) // 2))
            ys.append(float("nan"))
        xs.append(_when(stamps[i]))
        ys.append(float("nan") if m[name] is None else float(m[name]))
    return xs, ys


def _marker_strip(ax: Any, markers: list[_Marker], canvas: FigureCanvasAgg, fig: Figure) -> None:
    """Label every marker in the top strip, stacking labels on levels so none hides another; where events
    crowd beyond that, their lines stay and a note says how many labels were left out."""
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_ylabel("events", fontsize=11)
    levels = 3
    placed: list[list[Any]] = [[] for _ in range(levels)]
    # Final layout first, so the text extents measured below are the ones drawn.
    fig.get_layout_engine().execute(fig)  # type: ignore[union-attr]
    renderer = canvas.get_renderer()
    right_edge = ax.get_window_extent(renderer).x1
    left_out = 0
    for m in markers:
        x = _when(m.ts)
        ax.axvline(x, color=m.colour, ls=m.style, lw=m.width, ymax=0.98)
        for level in range(levels):
            text = ax.text(
                x,
                0.96 - level * (0.96 / levels),
                m.label,
                fontsize=8,
                va="top",
                ha="left",
                color=m.colour,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": m.colour, "lw": 0.6},
            )
            text.set_in_layout(False)  # a label must not shrink the panels
            box = text.get_window_extent(renderer)
            if box.x1 > right_edge:  # near the right end: the label goes to the left of its line
                text.set_ha("right")
                box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed[level]):
                placed[level].append(box)
                break
            text.remove()
        else:
            left_out += 1
    if left_out:
        ax.text(
            1.0,
            0.02,
            f"{left_out} labels left out where events crowd: the HTML page lists every event",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            style="italic",
            alpha=0.7,
            in_layout=False,
        )


def _lane_panel(ax: Any, lanes: dict[str, list[tuple[int, int, str]]], story: _Story) -> None:
    ax.set_ylabel("replicas", fontsize=11)
    ax.grid(False)
    if not lanes:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no replica events", ha="center", va="center", transform=ax.transAxes, alpha=0.6)
        return
    names = list(lanes)
    for row, instance in enumerate(names):
        for start, end, version in lanes[instance]:
            left = date2num(_when(start))
            width = max(date2num(_when(end)) - left, 1e-9)
            ax.broken_barh([(left, width)], (row - 0.35, 0.7), facecolors=story.colour.get(version, ACK))
        for a in story.acks:
            if a["instance"] == instance:
                rejected = a["event"] == "rejected"
                ax.plot(
                    _when(a["ts"]),
                    row,
                    marker="x" if rejected else "v",
                    color=FIRING if rejected else "black",
                    ms=7,
                    zorder=4,
                )
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()


# -- the page ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin-bottom: 4px; } h2 { font-size: 16px; margin-top: 28px; }
p.meta { color: #666; margin-top: 0; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 3px 10px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.deploy td:nth-child(2) { color: #222; font-weight: bold; }
tr.rollback td:nth-child(2) { color: #e8710a; font-weight: bold; }
tr.firing td:nth-child(2) { color: #d62728; font-weight: bold; }
tr.resolved td:nth-child(2) { color: #2ca02c; font-weight: bold; }
tr.rejected td:nth-child(2) { color: #d62728; }
tr.activated td { color: #555; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
"""


def _rows(story: _Story) -> list[tuple[int, str, str, str, str]]:
    """(ts, css class, what, version, detail) for every command, alert and ack, in time order."""
    rows: list[tuple[int, str, str, str, str]] = []
    for c in story.commands:
        detail = c["reason"]
        if c.get("issued_by"):
            detail = f"by {c['issued_by']}: {detail}"
        if c.get("alert_id"):
            detail += f" (alert {c['alert_id']})"
        rows.append((c["ts"], c["action"], c["action"], c["model_version"], f"{c['command_id']} · {detail}"))
    for a in story.alerts:
        compare = "<" if a["state"] == "firing" else "≥"
        detail = f"{a['rule']}: {a['metric']} {_fmt(a['value'])} {compare} {_fmt(a['threshold'])}"
        if a.get("severity"):
            detail += f" · {a['severity']}"
        if a.get("action") and a["state"] == "firing":
            detail += f" · action {a['action']}"
        rows.append((a["ts"], a["state"], f"alert {a['state']}", a["model_version"], detail))
    for e in story.acks:
        detail = e["instance"]
        issued = story.command_ts.get(e.get("command_id") or "")
        if issued is not None:
            detail += f" · {_seconds(e['ts'] - issued)} after {e['command_id']}"
        if e.get("error"):
            detail += f" · {e['error']}"
        rows.append((e["ts"], e["event"], e["event"], e.get("model_version") or "", detail))
    return sorted(rows, key=lambda r: r[0])


def _summary(story: _Story) -> str:
    lines = []
    for v in story.versions:
        points = [m for m in story.metrics if m["model_version"] == v]
        if not points:
            continue
        last = points[-1]
        f1s = [m["f1"] for m in points if m["f1"] is not None]
        swatch = f'<span class="swatch" style="background:{story.colour[v]}"></span>'
        cells = "".join(f'<td class="num">{_fmt(last[n])}</td>' for n in METRICS)
        lines.append(
            f"<tr><td>{swatch}{html.escape(v)}</td><td>{_clock(points[0]['ts'])}</td>"
            f"<td>{_clock(last['ts'])}</td><td class='num'>{len(points)}</td>{cells}"
            f"<td class='num'>{_fmt(min(f1s) if f1s else None)}</td></tr>"
        )
    if not lines:
        return "<p>No metrics yet.</p>"
    head = (
        "<tr><th>version</th><th>first metrics</th><th>last metrics</th><th>points</th><th>accuracy</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>lowest F1</th></tr>"
    )
    return f"<table>{head}{''.join(lines)}</table>"


def _page(story: _Story, png: bytes, title: str, unreadable: Sequence[str]) -> str:
    rows = "".join(
        f"<tr class='{html.escape(cls)}'><td>{_clock(ts)}</td><td>{html.escape(what)}</td>"
        f"<td>{html.escape(version)}</td><td>{html.escape(detail)}</td></tr>"
        for ts, cls, what, version, detail in _rows(story)
    )
    events = (
        f"<table><tr><th>time</th><th>what</th><th>version</th><th>detail</th></tr>{rows}</table>"
        if rows
        else "<p>No commands, alerts or acknowledgements yet.</p>"
    )
    skipped = ""
    if unreadable:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in unreadable[:50])
        more = f"<li>… and {len(unreadable) - 50} more</li>" if len(unreadable) > 50 else ""
        skipped = f"<h2>{len(unreadable)} unreadable events (skipped)</h2><ul>{items}{more}</ul>"
    generated = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    counts = (
        f"{len(story.metrics)} metrics ({story.window} window), {len(story.alerts)} alerts, "
        f"{len(story.commands)} commands, {len(story.acks)} acknowledgements, "
        f"{len(story.heartbeats)} heartbeats"
    )
    encoded = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">generated {generated} (local time) · {counts}</p>
<img alt="rolling accuracy, precision, recall and F1 per model version, with deploys, alerts and rollbacks"
 src="data:image/png;base64,{encoded}">
<h2>Versions</h2>
{_summary(story)}
<h2>Deploys, rollbacks, alerts and acknowledgements</h2>
{events}
{skipped}
</body></html>
"""


def draw_report(
    metrics: Sequence[Event],
    alerts: Sequence[Event],
    commands: Sequence[Event],
    model_events: Sequence[Event],
    out_dir: Path | str = ".",
    *,
    window: Window = "count",
    title: str = "modelwatch report",
    unreadable: Sequence[str] = (),
    stem: str = "modelwatch-report",
) -> ReportFiles:
    """Draw the report from decoded events into ``out_dir``/``stem``.png and .html (the PNG embedded)."""
    story = _Story(metrics, alerts, commands, model_events, window)
    png = _render(story, title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / f"{stem}.png", out / f"{stem}.html")
    files.png.write_bytes(png)
    files.html.write_text(_page(story, png, title, unreadable), encoding="utf-8")
    return files
