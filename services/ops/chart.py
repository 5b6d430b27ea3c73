"""The report's picture: one panel per metric, a marker strip on top, a lane per replica at the bottom.

Drawing uses matplotlib's Agg canvas directly (no pyplot): no display, no global figure state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from itertools import pairwise
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from services.ops.experiment_chart import experiment_panel
from services.ops.timeline import (
    ACK,
    DEPLOY,
    EXPERIMENT,
    FIRING,
    METRICS,
    RESOLVED,
    ROLLBACK,
    Event,
    Marker,
    Story,
    Window,
    when,
)


def render_png(
    metrics: Sequence[Event],
    alerts: Sequence[Event],
    commands: Sequence[Event],
    model_events: Sequence[Event],
    *,
    window: Window = "count",
    title: str = "modelwatch report",
    experiments: Sequence[Event] = (),
) -> bytes:
    """The report picture as PNG bytes."""
    return render_story(Story(metrics, alerts, commands, model_events, window, experiments), title)


def render_story(story: Story, title: str) -> bytes:
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
    experiments = bool(story.intervals())  # a panel of the comparisons, when an experiment ran
    # An experiment's steps come close together with long labels: more levels in a taller strip.
    levels = 8 if experiments else 3
    heights = [
        0.42 * levels,
        *([2.0] * len(METRICS)),
        *([1.8] if experiments else []),
        0.35 + 0.3 * lane_rows,
    ]
    fig = Figure(figsize=(13, 3.2 + sum(heights) * 1.25), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    strip, panels, lane_ax = axes[0], list(axes[1 : 1 + len(METRICS)]), axes[-1]

    if story.window_size is not None:
        unit = "labelled requests" if story.window == "count" else "s of event time"
        subtitle = f"rolling metrics per model version, {story.window} window of {story.window_size} {unit}"
    else:
        subtitle = f"no {story.window}-window metrics yet"
    subtitle += f"  ·  {when(story.start):%Y-%m-%d %H:%M:%S} to {when(story.end):%H:%M:%S} (local time)"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=12, x=0.01, ha="left")

    pad = max(1000, (story.end - story.start) * 0.02)
    x0, x1 = when(int(story.start - pad)), when(int(story.end + pad))
    markers = story.markers()
    spans = story.firing_spans()

    for name, ax in zip(METRICS, panels, strict=True):
        _metric_panel(ax, name, story, markers, spans)
    if experiments:
        experiment_panel(axes[-2], story, markers)
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
    if experiments:
        handles.append(Patch(facecolor=EXPERIMENT, alpha=0.18, label="experiment: estimate and interval"))
    handles += [
        Line2D([], [], color=DEPLOY, lw=1.6, label="deploy"),
        Line2D([], [], color=ROLLBACK, lw=2.2, label="rollback, abort"),
        Line2D([], [], color=EXPERIMENT, lw=1.6, label="shadow, canary, promote"),
        Line2D([], [], color=FIRING, lw=1.6, ls="--", label="alert firing"),
        Line2D([], [], color=RESOLVED, lw=1.6, ls="--", label="alert resolved"),
        Line2D([], [], color=ACK, lw=1, ls=":", label="replica activated (ack)"),
        Patch(facecolor=FIRING, alpha=0.12, label="while an alert fires"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    # Last: the labels are placed by measuring them in the final layout and limits.
    _marker_strip(strip, markers, canvas, fig, levels)
    return _png(fig, canvas)


def _png(fig: Figure, canvas: FigureCanvasAgg) -> bytes:
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    fig.clear()
    return buffer.getvalue()


def _verticals(ax: Any, markers: list[Marker], acks: list[Event]) -> None:
    for a in acks:
        ax.axvline(when(a["ts"]), color=FIRING if a["event"] == "rejected" else ACK, lw=0.9, ls=":", zorder=1)
    for m in markers:
        ax.axvline(when(m.ts), color=m.colour, ls=m.style, lw=m.width, zorder=2)


def _metric_panel(
    ax: Any, name: str, story: Story, markers: list[Marker], spans: list[tuple[Event, int]]
) -> None:
    label = "F1" if name == "f1" else name
    ax.set_ylabel(label, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    for alert, until in spans:
        ax.axvspan(when(alert["ts"]), when(until), color=FIRING, alpha=0.08, lw=0, zorder=0)
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
                alert["threshold"], when(alert["ts"]), when(until), colors=FIRING, linestyles="--", lw=1.2
            )
            ax.annotate(
                f"{alert['rule']} threshold {alert['threshold']:.2f}",
                (date2num(when(alert["ts"])), alert["threshold"]),
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
            xs.append(when((stamps[i] + stamps[i - 1]) // 2))
            ys.append(float("nan"))
        xs.append(when(stamps[i]))
        ys.append(float("nan") if m[name] is None else float(m[name]))
    return xs, ys


def _marker_strip(
    ax: Any, markers: list[Marker], canvas: FigureCanvasAgg, fig: Figure, levels: int = 3
) -> None:
    """Label every marker in the top strip, stacking labels on levels so none hides another; where events
    crowd beyond that, their lines stay and a note says how many labels were left out."""
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_ylabel("events", fontsize=11)
    placed: list[list[Any]] = [[] for _ in range(levels)]
    # Final layout first, so the text extents measured below are the ones drawn.
    fig.get_layout_engine().execute(fig)  # type: ignore[union-attr]
    renderer = canvas.get_renderer()
    right_edge = ax.get_window_extent(renderer).x1
    left_out = 0
    for m in markers:
        x = when(m.ts)
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


def _lane_panel(ax: Any, lanes: dict[str, list[tuple[int, int, str]]], story: Story) -> None:
    ax.set_ylabel("replicas", fontsize=11)
    ax.grid(False)
    if not lanes:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no replica events", ha="center", va="center", transform=ax.transAxes, alpha=0.6)
        return
    names = list(lanes)
    for row, instance in enumerate(names):
        for start, end, version in lanes[instance]:
            left = date2num(when(start))
            width = max(date2num(when(end)) - left, 1e-9)
            ax.broken_barh([(left, width)], (row - 0.35, 0.7), facecolors=story.colour.get(version, ACK))
        for a in story.acks:
            if a["instance"] == instance:
                rejected = a["event"] == "rejected"
                ax.plot(
                    when(a["ts"]),
                    row,
                    marker="x" if rejected else "v",
                    color=FIRING if rejected else "black",
                    ms=7,
                    zorder=4,
                )
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()
