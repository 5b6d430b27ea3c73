"""``modelwatch tail`` on the real broker: every event kind, bad events, filters, new-only, no group."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
from typing import Any

import orjson
import pytest
from rich.console import Console

from schemas import codec, load_example
from services import kafka
from services.cli import main
from services.config import Settings
from services.ops.console import Filters, tail

V1 = "20261124T034100-good0001"
V2 = "20261124T035900-bad00002"


def produce(settings: Settings, events: list[tuple[str, bytes]]) -> None:
    p = kafka.producer(settings)
    for suffix, value in events:
        p.produce(settings.topic(suffix), value=value)
    assert p.flush(10) == 0


def encoded(event: str, **changes: Any) -> bytes:
    return codec(event).encode(load_example(event) | changes)


def one_of_each(settings: Settings) -> list[tuple[str, bytes]]:
    return [
        ("requests", encoded("prediction-request", ts=1_000)),
        ("predictions", encoded("prediction", model_version=V1, ts=1_001)),
        ("outcomes", encoded("outcome", ts=1_002)),
        ("model-commands", encoded("model-command", model_version=V1, command_id="c-1", ts=1_003)),
        ("model-events", encoded("model-event", model_version=V1, command_id="c-1", ts=1_303)),
        ("metrics", encoded("metrics", model_version=V1, ts=1_004)),
        ("alerts", encoded("alert", model_version=V2, alert_id="a-1", ts=1_005)),
        ("alerts", encoded("alert", model_version=V2, alert_id="a-1", state="resolved", value=0.5, ts=1_006)),
        ("requests.dlq", encoded("dead-letter", source_topic=settings.topic("requests"), ts=1_007)),
        ("model-commands", b'{"action": "deploy"}'),
        ("alerts", b"\x00 not json"),
    ]


def test_tail_from_the_beginning_shows_every_kind_and_the_bad_ones(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    events = one_of_each(settings)
    produce(settings, events)
    code = main(["tail", "--from-beginning", "--max", str(len(events)), "--timeout", "30"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == len(events)
    text = "\n".join(lines)
    for expected in (
        "request ",
        "prediction ",
        "bought i-7",
        "▶ deploy    " + V1,
        "✓ activated " + V1,
        "metrics     " + V1,
        "FIRING      " + V2,
        "resolved    " + V2,
        "model: ValueError: the model could not score this request",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"
    bad = [line for line in lines if "✗ BAD" in line]
    assert len(bad) == 2
    assert any("model-command: command_id, model_version, reason, ts: is required" in b for b in bad)
    assert any("alert: <event>: not valid UTF-8 JSON" in b for b in bad)
    ack = next(line for line in lines if "✓ activated" in line)
    assert ack.endswith("+300 ms")  # matched to its command, read in the same run


def test_filters_and_prefixed_names_on_the_broker(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    produce(settings, one_of_each(settings))
    # Only the firing alert (the bad alert has no fields to place it, so it is shown too).
    code = main(["tail", settings.topic("alerts"), "--state", "firing", "--from-beginning", "--timeout", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    # In either order: the two are on different partitions, and tail orders by time only within what one
    # poll returns (a fetch may bring one partition before the other; seen in a fresh-clone run).
    assert len(lines) == 2 and sorted("FIRING" in line for line in lines) == [False, True]
    assert sorted("✗ BAD" in line for line in lines) == [False, True]
    # --version across every topic: the command, its ack, the prediction and the metrics of V1.
    code = main(["tail", "--version", V1, "--from-beginning", "--max", "4", "--timeout", "30"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[1] for line in lines] == ["predictions", "model-commands", "metrics", "model-events"]
    code = main(["tail", "model-events", "--instance", "serve-9", "--from-beginning", "--timeout", "2"])
    assert code == 0 and capsys.readouterr().out == ""


def test_json_output_pipes(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    produce(settings, one_of_each(settings))
    code = main(["tail", "alerts", "metrics", "--json", "--from-beginning", "--max", "4", "--timeout", "30"])
    captured = capsys.readouterr()
    assert code == 0
    events = [orjson.loads(line) for line in captured.out.splitlines()]
    assert sorted(e["ts"] for e in events) == [1_004, 1_005, 1_006]
    assert "✗ BAD" in captured.err  # counted as shown, written where it cannot break a pipe


def test_without_from_beginning_only_new_events_are_shown(settings: Settings) -> None:
    produce(settings, [("alerts", encoded("alert", alert_id="old", ts=1))])
    ready = threading.Event()
    buffer = Console(file=io.StringIO(), soft_wrap=True)
    result: list[Any] = []

    def run() -> None:
        result.append(
            tail(
                settings,
                ["alerts"],
                max_events=1,
                timeout=30,
                out=buffer,
                on_ready=ready.set,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(30)
    produce(settings, [("alerts", encoded("alert", alert_id="new", ts=2))])
    thread.join(40)
    assert not thread.is_alive()
    assert result[0].shown == 1 and result[0].reached_max
    out = buffer.file.getvalue()
    assert "[new]" in out and "[old]" not in out


def test_tail_joins_no_group_and_commits_nothing(settings: Settings) -> None:
    produce(settings, one_of_each(settings))
    result = tail(settings, from_beginning=True, filters=Filters(version=V2), max_events=2, timeout=30)
    assert result.shown == 2
    groups = kafka.admin(settings).list_consumer_groups(request_timeout=10).result()
    assert not [g.group_id for g in groups.valid if g.group_id.startswith(settings.topic_prefix)]


def test_max_not_reached_within_the_timeout_exits_1(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tail", "alerts", "--max", "1", "--timeout", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 of 1 events within 1s" in captured.err


def test_ctrl_c_exits_cleanly(settings: Settings) -> None:
    produce(settings, [("alerts", encoded("alert"))])
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "tail", "alerts", "--from-beginning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A non-interactive shell may start us with SIGINT ignored; a terminal's Ctrl-C is not ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # following now: the old alert is on screen
        assert b"FIRING" in first
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
