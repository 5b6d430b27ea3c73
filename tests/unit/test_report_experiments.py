"""The timeline and the report of an experiment's steps, drawn from recorded events: the commands (shadow,
canary, promote, abort) with their experiment and issuer, and a panel of each comparison's interval
narrowing until its decision. No broker."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from schemas import codec
from services.ops.report import draw_report, render_png
from services.ops.timeline import EXPERIMENT, ROLLBACK, Story, short_id

from .test_report import START, colour_pixels

GOOD, RETRAIN, BAD = "20261124T034100-3f2a9c1b", "20261130T020000-1a2b3c4d", "20261124T035900-77d0e2aa"
MONITOR, OPERATOR = "modelwatch-monitor", "alice@host"
Events = list[dict[str, Any]]


def command(cid: str, action: str, version: str, at_s: int, by: str, **extra: Any) -> dict[str, Any]:
    return {
        "command_id": cid,
        "action": action,
        "model_version": version,
        "reason": f"{action} {version}",
        "ts": START + at_s * 1000,
        "issued_by": by,
    } | extra


def comparison(eid: str, mode: str, candidate: str, incumbent: str, from_s: int, worse: bool) -> Events:
    """Experiment events every 2 s: the burn-in without an interval, then one narrowing to a decision."""
    out = []
    for step in range(8):
        n = 30 * (step + 1)
        half = None if step == 0 else 0.4 / (step**0.5)
        estimate = -0.1 if worse else 0.01
        decided = step == 7
        out.append(
            {
                "experiment_id": eid,
                "mode": mode,
                "candidate": candidate,
                "incumbent": incumbent,
                "traffic": 1.0 if mode == "shadow" else 0.2,
                "labelled": {"candidate": n, "incumbent": n if mode == "shadow" else 4 * n},
                "metric": "f1_per_request",
                "estimate": estimate,
                "interval": None if half is None else [estimate - half, estimate + half],
                "decision": ("abort" if worse else "promote") if decided else "running",
                "ts": START + (from_s + 2 * step) * 1000,
                "started_ts": START + from_s * 1000,
            }
        )
    return out


def recorded() -> tuple[Events, Events, Events]:
    commands = [
        command("d1", "deploy", GOOD, 0, OPERATOR),
        command("s1", "shadow", RETRAIN, 10, OPERATOR),
        command(
            "experiment:e-s1:canary", "canary", RETRAIN, 26, MONITOR, traffic=0.2, experiment_id="e-s1-canary"
        ),
        command(
            "experiment:e-s1-canary:promote", "promote", RETRAIN, 44, MONITOR, experiment_id="e-s1-canary"
        ),
        command("c2", "canary", BAD, 50, OPERATOR, traffic=0.2),
        command("experiment:e-c2:abort", "abort", BAD, 66, MONITOR, experiment_id="e-c2"),
    ]
    acks = [
        {
            "instance": f"serve-{i}",
            "event": "activated",
            "model_version": c["model_version"],
            "ts": c["ts"] + 100 * i,
            "command_id": c["command_id"],
        }
        for c in commands
        for i in (1, 2)
    ]
    experiments = [
        *comparison("e-s1", "shadow", RETRAIN, GOOD, 11, worse=False),
        *comparison("e-s1-canary", "canary", RETRAIN, GOOD, 27, worse=False),
        *comparison("e-c2", "canary", BAD, RETRAIN, 51, worse=True),
    ]
    return commands, acks, experiments


def test_the_recorded_events_keep_the_contract() -> None:
    commands, acks, experiments = recorded()
    for name, batch in (("model-command", commands), ("model-event", acks), ("experiment", experiments)):
        for e in batch:
            codec(name).validate(e)


def test_the_timeline_names_each_step_its_experiment_and_who_ordered_it() -> None:
    commands, acks, experiments = recorded()
    story = Story([], [], commands, acks, "count", experiments)
    labels = [m.label.split("\n")[:2] for m in story.markers()]
    assert labels == [
        [f"deploy {GOOD}", "2/2 acks, last +200 ms"],
        [f"shadow {RETRAIN}", f"experiment e-s1 by {OPERATOR}"],
        [f"canary {RETRAIN} at 0.2", f"experiment e-s1-canary by {MONITOR}"],
        [f"promote {RETRAIN}", f"experiment e-s1-canary by {MONITOR}"],
        [f"canary {BAD} at 0.2", f"experiment e-c2 by {OPERATOR}"],
        [f"abort {BAD}", f"experiment e-c2 by {MONITOR}"],
    ]
    colours = [m.colour for m in story.markers()]
    assert colours[1:5] == [EXPERIMENT] * 4 and colours[5] == ROLLBACK  # an abort: back to the incumbent
    # The intervals after the burn-in, per experiment, in event time, narrowing to the decision.
    intervals = story.intervals()
    assert list(intervals) == ["e-s1", "e-s1-canary", "e-c2"]
    for events in intervals.values():
        widths = [e["interval"][1] - e["interval"][0] for e in events]
        assert len(events) == 7 and widths == sorted(widths, reverse=True)
        assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert intervals["e-c2"][-1]["decision"] == "abort"
    # The system's long ids are shortened in a label (the page gives them whole), keeping the stage.
    assert short_id("e-c-fa917e7e66d44eefa5e9cec516c97ace-canary") == "e-c-fa917e7e…-canary"


def png_height(png: bytes) -> int:
    return Image.open(io.BytesIO(png)).size[1]


def test_the_picture_has_a_panel_of_the_intervals_only_when_an_experiment_ran() -> None:
    commands, acks, experiments = recorded()
    with_panel = render_png([], [], commands, acks, experiments=experiments)
    without = render_png([], [], commands, acks)
    assert png_height(with_panel) > png_height(without)
    # The estimate lines and decision marks are in the experiment colour, beyond the command markers.
    assert colour_pixels(with_panel, EXPERIMENT) > colour_pixels(without, EXPERIMENT) + 500


def test_the_page_lists_each_command_with_its_experiment(tmp_path: Path) -> None:
    commands, acks, experiments = recorded()
    files = draw_report([], [], commands, acks, tmp_path, experiments=experiments)
    page = files.html.read_text("utf-8")
    assert f"by {MONITOR}: canary {RETRAIN} (experiment e-s1-canary)" in page
    assert f"by {MONITOR}: abort {BAD} (experiment e-c2)" in page


@pytest.mark.parametrize("field", ["interval", "estimate"])
def test_an_experiment_still_in_its_burn_in_draws_no_band(field: str) -> None:
    commands, acks, experiments = recorded()
    burn_in = [e | {field: None} for e in experiments]
    assert Story([], [], commands, acks, "count", burn_in).intervals() == {}
    assert png_height(render_png([], [], commands, acks, experiments=burn_in)) == png_height(
        render_png([], [], commands, acks)
    )
