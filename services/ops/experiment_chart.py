"""The report's experiment panel: each experiment's estimate (candidate minus incumbent, per-request F1) and
its confidence sequence's interval over event time, narrowing until the decision (from ``rec.experiments``).

The interval is valid at every look at once (README, "Experiments: the comparison"), so the band may be
read at any point; the decision is marked where it was taken. The band is the interval of the difference;
the decision itself is on the margin's contrast (``margin_interval``), which the marker's label gives.
"""

from __future__ import annotations

from typing import Any

from services.ops.timeline import EXPERIMENT, FIRING, RESOLVED, Marker, Story, short_id, when

DECIDED = {"promote": RESOLVED, "abort": FIRING, "inconclusive": FIRING}


def experiment_panel(ax: Any, story: Story, markers: list[Marker]) -> None:
    """One band and line per experiment with an interval; a zero line; the decisions marked."""
    ax.set_ylabel("candidate −\nincumbent", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.axhline(0.0, color="#444444", lw=0.8, zorder=1)
    for m in markers:
        ax.axvline(when(m.ts), color=m.colour, ls=m.style, lw=m.width * 0.6, alpha=0.5, zorder=1)
    intervals = story.intervals()
    if not intervals:
        ax.text(
            0.5, 0.5, "no experiment intervals", ha="center", va="center", transform=ax.transAxes, alpha=0.6
        )
        return
    for eid, events in intervals.items():
        xs = [when(e["ts"]) for e in events]
        low = [float(e["interval"][0]) for e in events]
        high = [float(e["interval"][1]) for e in events]
        ax.fill_between(xs, low, high, color=EXPERIMENT, alpha=0.18, lw=0, step="post", zorder=2)
        ax.plot(xs, [float(e["estimate"]) for e in events], color=EXPERIMENT, lw=1.6, marker="o", ms=2.5)
        last = events[-1]
        decision = last["decision"]
        colour = DECIDED.get(decision, EXPERIMENT)
        ax.plot(xs[-1], float(last["estimate"]), marker="D", color=colour, ms=6, zorder=4)
        arms = last["labelled"]
        counts = f"{arms['candidate']:,} / {arms['incumbent']:,} labelled"
        ax.annotate(
            f"{short_id(eid)} ({last['mode']}): {decision}\n{counts}",
            (xs[-1], float(last["interval"][1])),
            xytext=(-4, 3),  # left of the decision: the next experiment starts to its right
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color=colour,
        )
