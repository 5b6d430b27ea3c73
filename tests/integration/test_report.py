"""``modelwatch report`` on the real broker: the four topics read whole, bad messages skipped and listed."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import pytest

from schemas import codec
from services import kafka
from services.cli import main
from services.config import Settings
from services.ops.report import read_report_events
from tests.unit.test_report import BAD, GOOD, story

TOPIC = {
    "metrics": "metrics",
    "alert": "alerts",
    "model-command": "model-commands",
    "model-event": "model-events",
}


def publish_story(settings: Settings) -> dict[str, int]:
    metrics, alerts, commands, events = story()
    p = kafka.producer(settings)
    counts: dict[str, int] = {}
    for event, batch in (
        ("metrics", metrics),
        ("alert", alerts),
        ("model-command", commands),
        ("model-event", events),
    ):
        for e in batch:
            key = e.get("model_version") or e.get("instance") or settings.model_name
            p.produce(settings.topic(TOPIC[event]), key=str(key).encode(), value=codec(event).encode(e))
        counts[event] = len(batch)
    p.produce(settings.topic("alerts"), value=b"{not json")
    p.produce(settings.topic("model-commands"), value=b'{"action": "deploy"}')
    assert p.flush(10) == 0
    return counts


def test_report_reads_the_topics_and_writes_both_files(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = publish_story(settings)
    code = main(["report", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    png = tmp_path / "r" / "modelwatch-report.png"
    page = tmp_path / "r" / "modelwatch-report.html"
    assert f"png:  {png}" in out and f"html: {page}" in out
    assert matplotlib.image.imread(png).shape[1] >= 1200
    text = page.read_text("utf-8")
    assert settings.topic_prefix in text  # the title names what was read
    count_metrics = counts["metrics"] // 2  # the story has a count and a time window per emission
    acks = sum(1 for e in story()[3] if e["event"] != "heartbeat")
    assert f"{count_metrics} metrics (count window), {counts['alert']} alerts, 3 commands," in text
    assert f"{acks} acknowledgements" in text
    rows = re.findall(r"<tr class='(\w+)'>", text)
    assert rows.count("deploy") == 2 and rows.count("rollback") == 1
    assert rows.count("firing") == 1 and rows.count("resolved") == 1
    assert "2 unreadable events (skipped)" in text
    assert f"{settings.topic('alerts')}: alert: &lt;event&gt;: not valid UTF-8 JSON" in text
    assert GOOD in text and BAD in text


def test_reading_layer_returns_decoded_events(settings: Settings) -> None:
    counts = publish_story(settings)
    found = read_report_events(settings)
    assert len(found.metrics) == counts["metrics"]
    assert len(found.alerts) == counts["alert"]
    assert len(found.commands) == counts["model-command"]
    assert len(found.model_events) == counts["model-event"]
    assert len(found.unreadable) == 2


def test_report_on_empty_topics_says_so(settings: Settings, tmp_path: Path) -> None:
    assert main(["report", "--out", str(tmp_path), "--window", "time"]) == 0
    assert "No metrics yet." in (tmp_path / "modelwatch-report.html").read_text("utf-8")
