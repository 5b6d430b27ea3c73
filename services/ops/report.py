"""``modelwatch report``: what happened and when, as a picture (PNG) and a self-contained HTML page.

The picture has one panel per metric (accuracy, precision, recall, F1) with a line per model version over
time, vertical markers for deploys and rollbacks (from the command topic), alerts firing and resolved, and
the replicas' activation acks, each labelled in a strip on top; a shaded band while an alert fires; and a
lane per replica at the bottom showing which version it served when (drawn by :mod:`services.ops.chart`).

:func:`draw_report` takes plain lists of events, so the demo and the tests can call it with what they hold;
:func:`read_report_events` and :func:`write_report` are the thin reading layer over the five topics.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from schemas import codec
from schemas.errors import ContractError, KafkaClientError
from services import kafka
from services.config import Settings
from services.ops.chart import render_png, render_story
from services.ops.timeline import METRICS, Event, Story, Window, clock, fmt, seconds

__all__ = ["ReportEvents", "ReportFiles", "draw_report", "read_report_events", "render_png", "write_report"]

TOPICS = {
    "metrics": "metrics",
    "alerts": "alert",
    "model-commands": "model-command",
    "model-events": "model-event",
    "experiments": "experiment",
}


@dataclass(frozen=True)
class ReportFiles:
    png: Path
    html: Path


@dataclass
class ReportEvents:
    """The decoded events of the five topics, and why any message could not be read."""

    metrics: list[Event] = field(default_factory=list)
    alerts: list[Event] = field(default_factory=list)
    commands: list[Event] = field(default_factory=list)
    model_events: list[Event] = field(default_factory=list)
    experiments: list[Event] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def read_report_events(settings: Settings, timeout: float = 10.0) -> ReportEvents:
    """Read rec.metrics, rec.alerts, rec.model-commands, rec.model-events and rec.experiments whole; bad
    messages are skipped and counted, never fatal (so is a missing rec.experiments, which topics created
    before experiments lack)."""
    found = ReportEvents()
    lists = {
        "metrics": found.metrics,
        "alerts": found.alerts,
        "model-commands": found.commands,
        "model-events": found.model_events,
        "experiments": found.experiments,
    }
    for suffix, event in TOPICS.items():
        try:
            values = _read_values(settings, settings.topic(suffix), timeout)
        except KafkaClientError as exc:
            if suffix != "experiments":
                raise
            found.unreadable.append(str(exc))
            continue
        for value in values:
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
    """Read the five topics and draw the report of the settings' model (``model_name``) into ``out_dir``:
    the events naming it, and those naming no model when it is the default model."""
    found = read_report_events(settings, timeout=timeout)
    model = settings.model_name

    def mine(events: list[Event]) -> list[Event]:
        return [e for e in events if settings.model_of(e) == model]

    named = "" if model == settings.default_model else f" (model {model})"
    return draw_report(
        mine(found.metrics),
        mine(found.alerts),
        mine(found.commands),
        mine(found.model_events),
        out_dir,
        window=window,
        title=f"modelwatch report: {settings.topic_prefix}* on {settings.bootstrap_servers}{named}",
        unreadable=found.unreadable,
        experiments=mine(found.experiments),
    )


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


def _rows(story: Story) -> list[tuple[int, str, str, str, str]]:
    """(ts, css class, what, version, detail) for every command, alert and ack, in time order."""
    rows: list[tuple[int, str, str, str, str]] = []
    for c in story.commands:
        detail = c["reason"]
        if c.get("issued_by"):
            detail = f"by {c['issued_by']}: {detail}"
        if c.get("alert_id"):
            detail += f" (alert {c['alert_id']})"
        if c.get("experiment_id"):
            detail += f" (experiment {c['experiment_id']})"
        rows.append((c["ts"], c["action"], c["action"], c["model_version"], f"{c['command_id']} · {detail}"))
    for a in story.alerts:
        compare = "<" if a["state"] == "firing" else "≥"
        detail = f"{a['rule']}: {a['metric']} {fmt(a['value'])} {compare} {fmt(a['threshold'])}"
        if a.get("severity"):
            detail += f" · {a['severity']}"
        if a.get("action") and a["state"] == "firing":
            detail += f" · action {a['action']}"
        rows.append((a["ts"], a["state"], f"alert {a['state']}", a["model_version"], detail))
    for e in story.acks:
        detail = e["instance"]
        issued = story.command_ts.get(e.get("command_id") or "")
        if issued is not None:
            detail += f" · {seconds(e['ts'] - issued)} after {e['command_id']}"
        if e.get("error"):
            detail += f" · {e['error']}"
        rows.append((e["ts"], e["event"], e["event"], e.get("model_version") or "", detail))
    return sorted(rows, key=lambda r: r[0])


def _summary(story: Story) -> str:
    lines = []
    for v in story.versions:
        points = [m for m in story.metrics if m["model_version"] == v]
        if not points:
            continue
        last = points[-1]
        f1s = [m["f1"] for m in points if m["f1"] is not None]
        swatch = f'<span class="swatch" style="background:{story.colour[v]}"></span>'
        cells = "".join(f'<td class="num">{fmt(last[n])}</td>' for n in METRICS)
        lines.append(
            f"<tr><td>{swatch}{html.escape(v)}</td><td>{clock(points[0]['ts'])}</td>"
            f"<td>{clock(last['ts'])}</td><td class='num'>{len(points)}</td>{cells}"
            f"<td class='num'>{fmt(min(f1s) if f1s else None)}</td></tr>"
        )
    if not lines:
        return "<p>No metrics yet.</p>"
    head = (
        "<tr><th>version</th><th>first metrics</th><th>last metrics</th><th>points</th><th>accuracy</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>lowest F1</th></tr>"
    )
    return f"<table>{head}{''.join(lines)}</table>"


def _page(story: Story, png: bytes, title: str, unreadable: Sequence[str]) -> str:
    rows = "".join(
        f"<tr class='{html.escape(cls)}'><td>{clock(ts)}</td><td>{html.escape(what)}</td>"
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
    experiments: Sequence[Event] = (),
) -> ReportFiles:
    """Draw the report from decoded events into ``out_dir``/``stem``.png and .html (the PNG embedded);
    ``experiments`` (``rec.experiments``) adds the panel of each comparison's interval."""
    story = Story(metrics, alerts, commands, model_events, window, experiments)
    png = render_story(story, title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / f"{stem}.png", out / f"{stem}.html")
    files.png.write_bytes(png)
    files.html.write_text(_page(story, png, title, unreadable), encoding="utf-8")
    return files
