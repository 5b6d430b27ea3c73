"""The ops console's lines: every event type, bad events, filters, JSON output. No broker."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from rich.console import Console
from rich.text import Text

from schemas import load_example
from schemas import topics as contract
from services.ops.console import Filters, _emit, resolve_topics
from services.ops.lines import LineFormatter, TailEvent

TOPIC_OF = {t.event: t for t in reversed(contract.ALL)}  # dead-letter: requests.dlq, its first topic
V = "20261124T034100-3f2a9c1b"  # the examples' model version


def event(name: str, **changes: Any) -> TailEvent:
    body = load_example(name) | changes
    return TailEvent.decode(TOPIC_OF[name], orjson.dumps(body), partition=1, offset=7, timestamp_ms=1_000)


def styles(line: Text) -> str:
    return " ".join(str(span.style) for span in line.spans)


@pytest.mark.parametrize(
    ("name", "essentials"),
    [
        (
            "prediction-request",
            ["requests", "request", "r-000001", "u-42", "3 candidates", "k=2", "page=home"],
        ),
        (
            "prediction",
            ["predictions", V, "r-000001", "i-7, i-301", "serve-1", "3.2 ms"],
        ),
        ("outcome", ["outcomes", "r-000001", "bought i-7"]),
        (
            "metrics",
            ["metrics", V, "count", "1000", "acc 0.830", "prec 0.410", "f1 0.490"],
        ),
        ("alert", ["alerts", "FIRING", "critical", "f1-drop: f1 0.210 < 0.350", "→ rollback"]),
        ("model-command", ["model-commands", "▶ deploy", V, "c-5b1e0d", "by ops"]),
        ("model-event", ["model-events", "✓ activated", V, "c-5b1e0d", "serve-1"]),
        (
            "dead-letter",
            ["requests.dlq", "dead", "rec.requests p3@1041", "model: ValueError"],
        ),
        (
            "experiment",
            [
                "experiments",
                "canary abort",
                "vs " + V,
                "10% of users",
                "n 812/7297",
                "Δ -0.0731 [-0.1102, -0.0360]",
                "margin 0.05: [-0.0946, -0.0203]",
            ],
        ),
    ],
)
def test_every_event_type_is_one_readable_line(name: str, essentials: list[str]) -> None:
    ev = event(name)
    assert not ev.bad
    line = LineFormatter().format(ev).plain
    assert "\n" not in line
    for part in essentials:
        assert part in line, f"{part!r} missing from {line!r}"


def test_the_line_starts_with_the_events_own_time() -> None:
    line = LineFormatter().format(event("outcome", ts=0)).plain
    # 12-char clock (local time), then the topic.
    assert line[2] == ":" and line[5] == ":" and line[8] == "."
    assert line[13:].startswith("outcomes")


def test_outcome_without_purchase_and_metrics_with_nulls() -> None:
    f = LineFormatter()
    assert "bought nothing" in f.format(event("outcome", purchased=[])).plain
    line = f.format(event("metrics", precision=None, f1=None, window={"kind": "time", "size": 300})).plain
    assert "prec   -  " in line and "f1   -  " in line and "time    300s" in line


def test_alerts_are_coloured_by_state_and_severity() -> None:
    f = LineFormatter()
    critical = f.format(event("alert", severity="critical"))
    warning = f.format(event("alert", severity="warning"))
    resolved = f.format(event("alert", state="resolved", value=0.5))
    assert "on red" in styles(critical)
    assert "on yellow" in styles(warning) and "on red" not in styles(warning)
    assert "green" in styles(resolved) and "on red" not in styles(resolved)
    assert "resolved" in resolved.plain and "0.500 ≥ 0.350" in resolved.plain
    assert "→ rollback" not in resolved.plain  # the action belongs to the firing


def test_a_deploy_and_its_acks_line_up_with_the_ack_delay() -> None:
    f = LineFormatter()
    command = f.format(event("model-command", ts=1_000)).plain
    ack = f.format(event("model-event", ts=1_350)).plain
    version = V
    assert command.index(version) == ack.index(version)
    assert command.index("c-5b1e0d") == ack.index("c-5b1e0d")
    assert ack.endswith("+350 ms")
    rollback = f.format(event("model-command", action="rollback", command_id="c-2")).plain
    assert "▶ rollback" in rollback and rollback.index(version) == ack.index(version)


def test_rejections_are_red_and_heartbeats_dim() -> None:
    f = LineFormatter()
    rejected = f.format(event("model-event", event="rejected", error="digest mismatch"))
    assert "✗ rejected" in rejected.plain and "digest mismatch" in rejected.plain
    assert "red" in styles(rejected)
    heartbeat = f.format(event("model-event", event="heartbeat", model_version=None))
    assert "heartbeat" in heartbeat.plain and "(none)" in heartbeat.plain
    assert "dim" in styles(heartbeat)


def test_dead_letters_are_red() -> None:
    line = LineFormatter().format(event("dead-letter"))
    assert all("red" in str(span.style) or str(span.style) == "dim" for span in line.spans[2:])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json at all", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (None, "message value is null"),
        (b'{"action": "explode", "model_version": "v1"}', "is required"),
        (b"[1, 2]", "must be object"),
    ],
)
def test_bad_events_are_shown_as_bad_with_the_reason(value: bytes | None, reason: str) -> None:
    ev = TailEvent.decode(contract.MODEL_COMMANDS, value, partition=2, offset=9, timestamp_ms=5_000)
    assert ev.bad and ev.error is not None and reason in ev.error
    line = LineFormatter().format(ev)
    assert "✗ BAD" in line.plain and "p2@9" in line.plain and reason in line.plain
    assert "on red" in styles(line)
    assert ev.ts_ms == 5_000  # a bad event is timed by its Kafka timestamp


def test_a_huge_bad_payload_is_cut() -> None:
    ev = TailEvent.decode(contract.ALERTS, b"x" * 10_000)
    assert len(LineFormatter().format(ev).plain) < 400


def test_filters_by_version_state_and_instance() -> None:
    v = V
    assert Filters().admits(event("prediction-request"))
    assert Filters(version=v).admits(event("metrics"))
    assert not Filters(version="other").admits(event("metrics"))
    assert not Filters(version=v).admits(event("prediction-request"))  # no version: not that version's
    assert Filters(state="firing").admits(event("alert"))
    assert not Filters(state="resolved").admits(event("alert"))
    assert not Filters(state="firing").admits(event("metrics"))
    assert Filters(instance="serve-1").admits(event("model-event"))
    assert Filters(instance="serve-1").admits(event("prediction"))
    assert not Filters(instance="serve-2").admits(event("model-event"))
    assert Filters(version=v, state="firing").admits(event("alert"))
    assert not Filters(version=v, state="firing").admits(event("alert", model_version="v2"))


def test_filters_never_hide_a_bad_event_they_cannot_place() -> None:
    unreadable = TailEvent.decode(contract.ALERTS, b"garbage")
    assert Filters(version="v1", state="firing", instance="x").admits(unreadable)
    other = TailEvent.decode(contract.ALERTS, b'{"model_version": "v2", "state": "firing"}')
    assert other.bad
    assert not Filters(version="v1").admits(other)
    assert Filters(version="v2", state="firing").admits(other)


def test_topics_resolve_with_or_without_the_prefix() -> None:
    assert resolve_topics([], "rec.") == list(contract.ALL)
    assert resolve_topics(["rec.alerts", "model-events", "alerts"], "rec.") == [
        contract.ALERTS,
        contract.MODEL_EVENTS,
    ]
    assert resolve_topics(["x.requests.dlq"], "x.") == [contract.REQUESTS_DLQ]
    with pytest.raises(ValueError, match=r"'rec\.bogus' is not a contract topic"):
        resolve_topics(["rec.bogus"], "rec.")


def test_json_output_is_one_parseable_event_per_line_and_bad_ones_go_to_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    batch = [event("alert"), TailEvent.decode(contract.ALERTS, b"garbage"), event("metrics")]
    _emit(batch, LineFormatter(), True, Console(file=out), Console(file=err))
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines] == [load_example("alert"), load_example("metrics")]
    assert "✗ BAD" in err.getvalue() and "garbage" in err.getvalue()


def test_plain_text_when_not_a_terminal() -> None:
    out = io.StringIO()
    _emit([event("alert"), event("model-command")], LineFormatter(), False, Console(file=out), Console())
    text = out.getvalue()
    assert "\x1b[" not in text
    assert len(text.splitlines()) == 2 and "FIRING" in text


def test_colour_on_a_terminal() -> None:
    out = io.StringIO()
    _emit([event("alert")], LineFormatter(), False, Console(file=out, force_terminal=True), Console())
    assert "\x1b[" in out.getvalue()


def test_experiment_commands_say_their_traffic_and_experiment() -> None:
    f = LineFormatter()
    canary = f.format(event("model-command", action="canary", traffic=0.2, command_id="c-9")).plain
    assert "▶ canary" in canary and "20% of users" in canary
    shadow = f.format(event("model-command", action="shadow", command_id="c-10")).plain
    assert "▶ shadow" in shadow and "of users" not in shadow
    abort = f.format(event("model-command", action="abort", command_id="c-11", experiment_id="e-c-9")).plain
    assert "▶ abort" in abort and "experiment e-c-9" in abort
    # Lined up with the deploys and acks: the version in the same column.
    deploy = f.format(event("model-command")).plain
    assert canary.index(V) == abort.index(V) == deploy.index(V)
    ev = event("model-command", action="abort", experiment_id="e-c-9")
    assert "red" in styles(LineFormatter().format(ev))
