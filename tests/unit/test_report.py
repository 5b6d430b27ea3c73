"""The report drawn from synthetic events: files, a decodable PNG that shows the markers, a page that
stands alone. No broker."""

from __future__ import annotations

import base64
import io
import random
import re
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from schemas import codec
from services.ops.report import ReportFiles, draw_report, render_png
from services.ops.timeline import DEPLOY, FIRING, RESOLVED, ROLLBACK, VERSION_COLOURS

START = 1_795_491_600_000
GOOD, BAD = "20261124T034100-3f2a9c1b", "20261124T035900-77d0e2aa"

Events = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


def story(replicas: int = 2) -> Events:
    """The demo's story: GOOD deployed, BAD deployed and degrading, an alert, a rollback, recovery."""
    rnd = random.Random(1)
    metrics: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    commands: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def command(cid: str, action: str, version: str, at: int, reason: str, **extra: Any) -> None:
        commands.append(
            {"command_id": cid, "action": action, "model_version": version, "reason": reason, "ts": at}
            | extra
        )
        for i in range(replicas):
            events.append(
                {
                    "instance": f"serve-{i + 1}",
                    "event": "activated",
                    "model_version": version,
                    "ts": at + 150 + 180 * i,
                    "command_id": cid,
                }
            )

    command("c-1", "deploy", GOOD, START + 2_000, "initial deploy", issued_by="demo")
    command("c-2", "deploy", BAD, START + 60_000, "weekly retrain", issued_by="demo")
    command("c-3", "rollback", GOOD, START + 95_400, "alert f1-drop", issued_by="monitor", alert_id="a-1")
    firing = {
        "alert_id": "a-1",
        "rule": "f1-drop",
        "state": "firing",
        "model_version": BAD,
        "metric": "f1",
        "value": 0.21,
        "threshold": 0.35,
        "ts": START + 95_000,
        "severity": "critical",
        "action": "rollback",
    }
    alerts += [firing, firing | {"state": "resolved", "value": 0.41, "ts": START + 150_000}]
    for t in range(START + 10_000, START + 180_000, 5_000):
        for version in (GOOD, BAD):
            if version == GOOD and START + 62_000 < t < START + 100_000:
                continue
            if version == BAD and not START + 65_000 <= t <= START + 100_000:
                continue
            if version == GOOD:
                f1 = 0.52 + rnd.uniform(-0.02, 0.02)
            else:
                f1 = 0.5 - (t - START - 65_000) / 30_000 * 0.3
            values = {"accuracy": 0.78 + f1 * 0.2, "precision": f1 - 0.08, "recall": f1 + 0.12, "f1": f1}
            for kind, size in (("count", 1000), ("time", 300)):
                metrics.append(
                    {"model_version": version, "window": {"kind": kind, "size": size}, "n": 1000, "ts": t}
                    | {k: round(v, 4) for k, v in values.items()}
                )
    for t in range(START, START + 181_000, 5_000):
        for i in range(replicas):
            active = GOOD if (t < START + 60_000 or t > START + 96_000) else BAD
            events.append(
                {
                    "instance": f"serve-{i + 1}",
                    "event": "heartbeat",
                    "model_version": None if t < START + 2000 else active,
                    "ts": t + 40 * i,
                }
            )
    return metrics, alerts, commands, events


def test_the_story_is_made_of_valid_contract_events() -> None:
    metrics, alerts, commands, events = story()
    for name, batch in (
        ("metrics", metrics),
        ("alert", alerts),
        ("model-command", commands),
        ("model-event", events),
    ):
        for e in batch:
            codec(name).validate(e)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    """The story drawn once for the tests that only look at it (a drawing takes about a second)."""
    return draw_report(*story(), tmp_path_factory.mktemp("report") / "out", title="demo <run>")


def colour_pixels(png: bytes, hex_colour: str, tolerance: int = 12) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(axis=2) <= tolerance).sum())


def test_report_files_exist_and_the_png_decodes(drawn: ReportFiles) -> None:
    files = drawn
    assert files.png.name == "modelwatch-report.png" and files.png.is_file()
    assert files.html == files.png.with_suffix(".html") and files.html.is_file()
    image = matplotlib.image.imread(files.png)
    height, width = image.shape[:2]
    assert width >= 1200 and height >= 1200  # large enough to read panel by panel
    with Image.open(files.png) as pil:
        assert pil.format == "PNG" and pil.size == (width, height)


def test_the_picture_shows_versions_deploys_alerts_and_the_rollback(drawn: ReportFiles) -> None:
    png = drawn.png.read_bytes()
    for colour in (VERSION_COLOURS[0], VERSION_COLOURS[1], DEPLOY, ROLLBACK, FIRING, RESOLVED):
        assert colour_pixels(png, colour) > 1000, colour
    # Without alerts and rollbacks only their legend entries keep those colours: the check above can fail.
    metrics, _alerts, commands, events = story()
    quiet = render_png(metrics, [], [c for c in commands if c["action"] == "deploy"], events)
    assert colour_pixels(quiet, ROLLBACK) < 200 and colour_pixels(quiet, FIRING) < 200


def test_the_page_stands_alone_and_embeds_the_same_png(drawn: ReportFiles) -> None:
    files = drawn
    page = files.html.read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", text)
    assert not re.search(r"(?i)<(script|link|iframe)|@import|url\(", text)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == files.png.read_bytes()
    assert "demo &lt;run&gt;" in page  # escaped, never markup


def test_the_page_lists_every_command_alert_and_ack_in_time_order(drawn: ReportFiles) -> None:
    page = drawn.html.read_text("utf-8")
    table = page.split("<h2>Deploys, rollbacks, alerts and acknowledgements</h2>", 1)[1]
    rows = re.findall(r"<tr class='(\w+)'><td>([\d:.]+)</td>", table)
    kinds = [kind for kind, _ in rows]
    assert kinds == [
        "deploy",
        *["activated"] * 2,
        "deploy",
        *["activated"] * 2,
        "firing",
        "rollback",
        *["activated"] * 2,
        "resolved",
    ]
    assert [t for _, t in rows] == sorted(t for _, t in rows)
    assert "serve-2 · 330 ms after c-3" in table
    assert "f1-drop: f1 0.210 &lt; 0.350 · critical · action rollback" in table
    versions = page.split("<h2>Versions</h2>", 1)[1].split("<h2>", 1)[0]
    assert GOOD in versions and BAD in versions and "0.150" in versions  # BAD's lowest F1


def test_either_window_is_drawn_and_named(drawn: ReportFiles, tmp_path: Path) -> None:
    assert "(count window)" in drawn.html.read_text("utf-8")  # the default
    files = draw_report(*story(), tmp_path, window="time")
    assert "(time window)" in files.html.read_text("utf-8")


def test_nothing_yet_still_makes_a_report(tmp_path: Path) -> None:
    files = draw_report([], [], [], [], tmp_path)
    assert matplotlib.image.imread(files.png).shape[0] > 100
    page = files.html.read_text("utf-8")
    assert "No metrics yet." in page and "No commands, alerts or acknowledgements yet." in page


def test_odd_but_valid_events_do_not_break_it(tmp_path: Path) -> None:
    metrics, alerts, commands, events = story(replicas=3)
    # Undefined metrics, a rejected deploy, a drift alert on a metric without a panel, an unknown version.
    metrics = [m | {"precision": None, "f1": None} if i % 7 == 0 else m for i, m in enumerate(metrics)]
    events.append(
        {
            "instance": "serve-3",
            "event": "rejected",
            "model_version": "v-x",
            "ts": START + 61_000,
            "error": "bad",
        }
    )
    commands.append(
        {"command_id": "c-x", "action": "deploy", "model_version": "v-x", "reason": "", "ts": START}
    )
    alerts.append(alerts[0] | {"alert_id": "d-1", "rule": "drift", "metric": "error_rate", "value": None})
    files = draw_report(
        metrics, alerts, commands, events, tmp_path, unreadable=["rec.alerts: alert: <event>: x"]
    )
    page = files.html.read_text("utf-8")
    assert "1 unreadable events (skipped)" in page and "rejected" in page
    assert matplotlib.image.imread(files.png).ndim == 3


def test_many_close_markers_are_all_labelled(tmp_path: Path) -> None:
    metrics, alerts, _commands, events = story()
    # Ten deploys a second apart: labels stack on levels instead of vanishing.
    commands = [
        {
            "command_id": f"c-{i}",
            "action": "deploy",
            "model_version": f"v{i}",
            "reason": "",
            "ts": START + 1000 * i,
        }
        for i in range(10)
    ]
    png = render_png(metrics, alerts, commands, events)
    assert Image.open(io.BytesIO(png)).size[0] >= 1200
